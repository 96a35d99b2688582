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
