(function executeRule(current, previous /* unused: the event carries the record as it is now */) {
    // Neo Agent — Task Webhook. Managed by servicenow-operator: edits are reverted on its next
    // drift check. Posts each insert/update of a task-family record, without waiting for the
    // answer, to the callback URL held by the system property x_neoagent.callback_url, signed
    // (HMAC-SHA256 over the timestamp and the body) with the Base64 key after the URL's "#key=".
    // The key is never sent: only the part before "#" is the endpoint.
    var configured = gs.getProperty('x_neoagent.callback_url', '');
    var mark = configured.indexOf('#key=');
    var endpoint = mark < 0 ? '' : configured.substring(0, mark);
    var key = mark < 0 ? '' : configured.substring(mark + 5);
    if (!endpoint || !key) {
        gs.warn('Neo Agent task webhook: the system property x_neoagent.callback_url holds no callback URL with a signing key; no event sent');
        return;
    }
    var event = {
        id: gs.generateGUID(),
        instance: gs.getProperty('glide.servlet.uri', ''),
        table: current.getRecordClassName(),
        sys_id: current.getUniqueValue(),
        number: current.getValue('number'),
        operation: current.operation(),
        sys_updated_on: current.getValue('sys_updated_on'),
        sys_updated_by: current.getValue('sys_updated_by')
    };
    try {
        var body = JSON.stringify(event);
        var timestamp = String(new GlideDateTime().getNumericValue());
        var signature = new GlideCertificateEncryption().generateMac(key, 'HmacSHA256', timestamp + '.' + body);
        var request = new sn_ws.RESTMessageV2();
        request.setEndpoint(endpoint);
        request.setHttpMethod('post');
        request.setRequestHeader('Content-Type', 'application/json');
        request.setRequestHeader('X-Neoagent-Timestamp', timestamp);
        request.setRequestHeader('X-Neoagent-Signature', 'v1=' + signature);
        request.setRequestBody(body);
        request.executeAsync();
    } catch (e) {
        gs.error('Neo Agent task webhook: failed to send the ' + event.operation + ' event of ' + event.table + ' ' +
            event.sys_id + ': ' + e);
    }
})(current, previous);
