{{- define "snop.name" -}}{{ .Release.Name }}-servicenow-operator{{- end -}}
{{- define "snop.labels" -}}
app.kubernetes.io/name: servicenow-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "snop.selector" -}}
app.kubernetes.io/name: servicenow-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- /* The public component's name (Deployment, ServiceAccount, Service). */ -}}
{{- define "snop.public" -}}{{ include "snop.name" . }}-public{{- end -}}
{{- /* Labels and selector of one component: (list $ "controller") or (list $ "public"). */ -}}
{{- define "snop.labelsOf" -}}
{{ include "snop.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}
{{- define "snop.selectorOf" -}}
{{ include "snop.selector" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}
{{- /* The watched namespaces, comma-separated (watchNamespaces, and the older watchNamespace);
       empty: all namespaces. */ -}}
{{- define "snop.watchNamespaces" -}}
{{- $one := ternary (list .Values.watchNamespace) (list) (ne .Values.watchNamespace "") -}}
{{- join "," (concat (.Values.watchNamespaces | default list) $one | uniq) -}}
{{- end -}}
{{- /* The hand-off key Secret, mounted into both components: handoff.existingSecret, or the
       chart's own. */ -}}
{{- define "snop.handoffSecret" -}}{{ .Values.handoff.existingSecret | default (printf "%s-handoff" (include "snop.name" .)) }}{{- end -}}
{{- /* What both components' pods share: pull Secrets, scheduling, pod security. (list $ "component") */ -}}
{{- define "snop.podCommon" -}}
{{- $args := . -}}
{{- $root := index . 0 -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with $root.Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  {{- range $root.Values.topologySpread.topologyKeys }}
  - maxSkew: {{ $root.Values.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels: {{- include "snop.selectorOf" $args | nindent 8 }}
  {{- end }}
{{- end }}
securityContext:
  runAsNonRoot: true
  seccompProfile: {type: RuntimeDefault}
{{- end -}}
{{- /* What both components' containers share: image, probes, container security, resources. */ -}}
{{- define "snop.containerCommon" -}}
image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
imagePullPolicy: {{ .Values.image.pullPolicy }}
livenessProbe:
  httpGet: {path: /healthz, port: admin}
readinessProbe:
  httpGet: {path: /readyz, port: admin}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: ["ALL"]}
resources: {{- toYaml .Values.resources | nindent 2 }}
{{- end -}}
{{- /* The hand-off key: the installed one (kept on upgrade), else a new random one, the same
       everywhere in one rendering. */ -}}
{{- define "snop.handoffKey" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "snop.handoffSecret" .) -}}
{{- if and $existing $existing.data (index $existing.data "key") -}}
{{- index $existing.data "key" | b64dec -}}
{{- else -}}
{{- if not (hasKey .Values "_handoffKey") -}}
{{- $_ := set .Values "_handoffKey" (randAlphaNum 48) -}}
{{- end -}}
{{- index .Values "_handoffKey" -}}
{{- end -}}
{{- end -}}
{{- /* The controller's rights where it watches connections. */ -}}
{{- define "snop.watchRules" -}}
- apiGroups: ["neoagent.io"]
  resources: ["servicenowconnections"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["neoagent.io"]
  resources: ["servicenowconnections/status"]
  verbs: ["get", "patch"]
- apiGroups: ["neoagent.io"]
  resources: ["servicenowconnections/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
