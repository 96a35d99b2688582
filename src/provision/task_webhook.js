(function executeRule(current, previous /* unused: the event carries the record as it is now */) {
    // Neo Agent — Task Webhook. Managed by servicenow-operator: edits are reverted on its next
    // drift check. Posts each insert/update of a task-family record to the URL held by the
    // system property x_neoagent.callback_url, without waiting for the answer.
    var endpoint = gs.getProperty('x_neoagent.callback_url', '');
    if (!endpoint) {
        gs.warn('Neo Agent task webhook: the system property x_neoagent.callback_url is empty; no event sent');
        return;
    }
    var event = {
        table: current.getTableName(),
        sys_id: current.getUniqueValue(),
        number: current.getValue('number'),
        operation: current.operation(),
        sys_updated_on: current.getValue('sys_updated_on'),
        sys_updated_by: current.getValue('sys_updated_by')
    };
    try {
        var request = new sn_ws.RESTMessageV2();
        request.setEndpoint(endpoint);
        request.setHttpMethod('post');
        request.setRequestHeader('Content-Type', 'application/json');
        request.setRequestBody(JSON.stringify(event));
        request.executeAsync();
    } catch (e) {
        gs.error('Neo Agent task webhook: failed to send the ' + event.operation + ' event of ' + event.table + ' ' +
            event.sys_id + ': ' + e);
    }
})(current, previous);
