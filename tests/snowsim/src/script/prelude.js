// The Glide objects a Business Rule script sees (servicenow-api.md §3.5), for snowsim's script
// runner (`engine.rs`). This source evaluates to a setup function that `engine.rs` calls with
//   host: native functions — property(name) → string | undefined, log(level, message),
//         execute(requestJson) → {status, body, error}, queue(requestJson),
//         basicAuth(user, password) → 'Basic …', mac(base64Key, algorithm, data) → base64 MAC,
//         guid() → 32 hex digits;
//   env:  {table, operation, current, previous /* object | null */, userId, userName, now}.
// It defines the globals `current`, `previous`, `gs`, `sn_ws`, `RESTMessageV2`, `GlideDateTime`,
// `GlideCertificateEncryption` (and its scoped name `CertificateEncryption`) and `JSUtil`.
(function (host, env) {
  'use strict';

  var stringify = JSON.stringify;
  var hasOwn = Object.prototype.hasOwnProperty;

  /** A writable, non-enumerable property: invisible to `for…in` and JSON.stringify. */
  function hide(target, name, value) {
    Object.defineProperty(target, name, { value: value, writable: true, configurable: true });
  }

  /** Non-enumerable methods, so `for (var field in current)` lists fields only. */
  function methods(target, table) {
    Object.keys(table).forEach(function (name) {
      hide(target, name, table[name]);
    });
  }

  function text(value) {
    return value === null || value === undefined ? '' : String(value);
  }

  // ---- GlideRecord / GlideElement -------------------------------------------------------------

  /**
   * A record: `values` maps field → string; `before` is the before-image changes compare with,
   * `null` to compare with an empty record (an insert), `undefined` when changes are unknown
   * (then nothing "changes").
   */
  function ScriptRecord(values, before) {
    hide(this, '_values', values);
    hide(this, '_before', before);
    var record = this;
    Object.keys(values).forEach(function (name) {
      // Methods (and Object.prototype members such as `__proto__`) win over fields of that name.
      if (!(name in record)) {
        record[name] = new GlideElement(record, name);
      }
    });
  }

  function fieldValue(record, name) {
    return hasOwn.call(record._values, name) ? text(record._values[name]) : '';
  }

  /** The value `name` had before the write, or undefined when that is unknown. */
  function beforeOf(record, name) {
    var before = record._before;
    if (before === undefined) {
      return undefined;
    }
    return before !== null && hasOwn.call(before, name) ? text(before[name]) : '';
  }

  function changed(record, name) {
    var was = beforeOf(record, name);
    return was !== undefined && was !== fieldValue(record, name);
  }

  var DISPLAY_FIELDS = ['number', 'name', 'short_description', 'sys_id'];

  methods(ScriptRecord.prototype, {
    getValue: function (name) {
      var value = fieldValue(this, text(name));
      return value === '' ? null : value;
    },
    getDisplayValue: function (name) {
      if (name === undefined) {
        var record = this;
        var field = DISPLAY_FIELDS.filter(function (f) { return fieldValue(record, f) !== ''; })[0];
        return field === undefined ? '' : fieldValue(this, field);
      }
      return fieldValue(this, text(name));
    },
    getElement: function (name) {
      name = text(name);
      return hasOwn.call(this._values, name) ? new GlideElement(this, name) : null;
    },
    isValidField: function (name) {
      return hasOwn.call(this._values, text(name));
    },
    getTableName: function () {
      return env.table;
    },
    getUniqueValue: function () {
      return fieldValue(this, 'sys_id');
    },
    getRecordClassName: function () {
      return fieldValue(this, 'sys_class_name') || env.table;
    },
    operation: function () {
      return env.operation;
    },
    isNewRecord: function () {
      return env.operation === 'insert';
    },
    isValidRecord: function () {
      return fieldValue(this, 'sys_id') !== '';
    },
    changes: function () {
      var record = this;
      var names = Object.keys(this._values);
      if (this._before) {
        names = names.concat(Object.keys(this._before));
      }
      return names.some(function (name) { return changed(record, name); });
    }
  });

  function GlideElement(record, name) {
    hide(this, '_record', record);
    hide(this, '_name', name);
  }

  methods(GlideElement.prototype, {
    toString: function () {
      return fieldValue(this._record, this._name);
    },
    valueOf: function () {
      return fieldValue(this._record, this._name);
    },
    getValue: function () {
      return fieldValue(this._record, this._name);
    },
    getDisplayValue: function () {
      return fieldValue(this._record, this._name);
    },
    getName: function () {
      return this._name;
    },
    getTableName: function () {
      return env.table;
    },
    nil: function () {
      return fieldValue(this._record, this._name) === '';
    },
    changes: function () {
      return changed(this._record, this._name);
    },
    changesTo: function (value) {
      return this.changes() && fieldValue(this._record, this._name) === text(value);
    },
    changesFrom: function (value) {
      return this.changes() && beforeOf(this._record, this._name) === text(value);
    }
  });

  // ---- gs ------------------------------------------------------------------------------------

  /** gs.info-style substitution: `{0}` … `{n}` become the arguments after the message. */
  function substitute(message, args) {
    return String(message).replace(/\{(\d+)\}/g, function (whole, index) {
      var i = Number(index);
      return i < args.length ? String(args[i]) : whole;
    });
  }

  function logger(level) {
    return function (message) {
      host.log(level, substitute(message, Array.prototype.slice.call(arguments, 1)));
    };
  }

  function nil(value) {
    return value === null || value === undefined || String(value) === '';
  }

  var gs = {
    getProperty: function (name, fallback) {
      var value = host.property(text(name));
      return value === undefined ? fallback : value;
    },
    debug: logger('debug'),
    info: logger('info'),
    warn: logger('warn'),
    error: logger('error'),
    /** gs.log(message, source): the source is not part of the message. */
    log: function (message) {
      host.log('info', String(message));
    },
    print: function (message) {
      host.log('info', String(message));
    },
    getUserID: function () {
      return env.userId;
    },
    getUserName: function () {
      return env.userName;
    },
    nowDateTime: function () {
      return env.now;
    },
    nil: nil,
    /** A new GUID: 32 lower-case hexadecimal digits, like a sys_id. */
    generateGUID: function () {
      return host.guid();
    },
    eventQueue: function () {}
  };

  // ---- sn_ws.RESTMessageV2 -------------------------------------------------------------------

  /** The endpoint with the setQueryParameter pairs appended. */
  function fullEndpoint(request) {
    if (request.query.length === 0) {
      return request.endpoint;
    }
    var query = request.query.map(function (pair) {
      return encodeURIComponent(pair[0]) + '=' + encodeURIComponent(pair[1]);
    }).join('&');
    return request.endpoint + (request.endpoint.indexOf('?') < 0 ? '?' : '&') + query;
  }

  function snapshot(request) {
    return stringify({
      method: request.method,
      endpoint: fullEndpoint(request),
      headers: request.headers,
      body: request.body,
      timeout_ms: request.timeout_ms
    });
  }

  /** `new sn_ws.RESTMessageV2()`; the (name, method) form of a named message starts empty too. */
  function RESTMessageV2() {
    hide(this, '_request', {
      method: 'GET', endpoint: '', headers: [], query: [], body: '', timeout_ms: null
    });
  }

  methods(RESTMessageV2.prototype, {
    setEndpoint: function (url) {
      this._request.endpoint = text(url);
    },
    getEndpoint: function () {
      return fullEndpoint(this._request);
    },
    setHttpMethod: function (method) {
      this._request.method = text(method).toUpperCase();
    },
    setRequestHeader: function (name, value) {
      name = text(name);
      value = text(value);
      var headers = this._request.headers;
      var lower = name.toLowerCase();
      for (var i = 0; i < headers.length; i++) {
        if (headers[i][0].toLowerCase() === lower) {
          headers[i][1] = value;
          return;
        }
      }
      headers.push([name, value]);
    },
    getRequestHeader: function (name) {
      var lower = text(name).toLowerCase();
      var found = this._request.headers.filter(function (h) { return h[0].toLowerCase() === lower; });
      return found.length === 0 ? '' : found[0][1];
    },
    setQueryParameter: function (name, value) {
      this._request.query.push([text(name), text(value)]);
    },
    setRequestBody: function (body) {
      this._request.body = text(body);
    },
    getRequestBody: function () {
      return this._request.body;
    },
    setHttpTimeout: function (milliseconds) {
      var ms = Number(milliseconds);
      if (isFinite(ms) && ms >= 0) {
        this._request.timeout_ms = Math.min(Math.floor(ms), Number.MAX_SAFE_INTEGER);
      }
    },
    setBasicAuth: function (user, password) {
      this.setRequestHeader('Authorization', host.basicAuth(text(user), text(password)));
    },
    /** Sends now and waits; the host answers `{status, body, error}`. */
    execute: function () {
      var request = this._request;
      return new RESTResponseV2(fullEndpoint(request), host.execute(snapshot(request)));
    },
    /** Recorded only: the host sends it after the write, so this response stays at status 0. */
    executeAsync: function () {
      var request = this._request;
      host.queue(snapshot(request));
      return new RESTResponseV2(fullEndpoint(request), { status: 0, body: '', error: null });
    }
  });

  function RESTResponseV2(endpoint, answer) {
    hide(this, '_endpoint', endpoint);
    hide(this, '_answer', answer);
  }

  /** The path of an endpoint, as RESTResponseV2 error messages quote it. */
  function pathOf(endpoint) {
    return endpoint.replace(/^[a-z][a-z0-9+.-]*:\/\/[^\/?#]*/i, '').replace(/[?#].*$/, '') || '/';
  }

  methods(RESTResponseV2.prototype, {
    getStatusCode: function () {
      return this._answer.status;
    },
    getBody: function () {
      return this._answer.body;
    },
    haveError: function () {
      return this._answer.error !== null || this._answer.status >= 400;
    },
    getErrorMessage: function () {
      if (this._answer.error !== null) {
        return this._answer.error;
      }
      if (this._answer.status >= 400) {
        return 'Method failed: (' + pathOf(this._endpoint) + ') with code: ' + this._answer.status;
      }
      return '';
    },
    /** The HTTP status for HTTP errors, 1 for a transport failure, 0 otherwise. */
    getErrorCode: function () {
      if (this._answer.error !== null) {
        return 1;
      }
      return this._answer.status >= 400 ? this._answer.status : 0;
    },
    getHeader: function () {
      return '';
    },
    getHeaders: function () {
      return {};
    },
    waitForResponse: function () {}
  });

  // ---- GlideDateTime, JSUtil -----------------------------------------------------------------

  /** `new GlideDateTime()` holds "now" (UTC); `new GlideDateTime(value)` holds `value`. */
  function GlideDateTime(value) {
    hide(this, '_value', value === undefined ? env.now : text(value));
  }

  methods(GlideDateTime.prototype, {
    getValue: function () {
      return this._value;
    },
    getDisplayValue: function () {
      return this._value;
    },
    setValue: function (value) {
      this._value = text(value);
    },
    /** Milliseconds since 1970-01-01 00:00:00 UTC (the value is `YYYY-MM-DD HH:MM:SS` UTC). */
    getNumericValue: function () {
      return Date.parse(this._value.replace(' ', 'T') + 'Z');
    },
    toString: function () {
      return this._value;
    }
  });

  // ---- GlideCertificateEncryption (servicenow-api.md §3.6) ---------------------------------------

  /** `new GlideCertificateEncryption()`; scoped scripts call it `CertificateEncryption`. */
  function GlideCertificateEncryption() {}

  methods(GlideCertificateEncryption.prototype, {
    /** The MAC of `data` under the Base64 `key` with the Java MAC `algorithm`, in Base64. */
    generateMac: function (key, algorithm, data) {
      return host.mac(text(key), text(algorithm), text(data));
    }
  });

  var JSUtil = {
    nil: nil,
    notNil: function (value) {
      return !nil(value);
    }
  };

  // ---- globals -------------------------------------------------------------------------------

  var changesBase = env.previous !== null ? env.previous : env.operation === 'insert' ? null : undefined;
  globalThis.current = new ScriptRecord(env.current, changesBase);
  globalThis.previous = env.previous === null ? null : new ScriptRecord(env.previous, undefined);
  globalThis.gs = gs;
  globalThis.sn_ws = { RESTMessageV2: RESTMessageV2 };
  globalThis.RESTMessageV2 = RESTMessageV2;
  globalThis.GlideDateTime = GlideDateTime;
  globalThis.GlideCertificateEncryption = GlideCertificateEncryption;
  globalThis.CertificateEncryption = GlideCertificateEncryption;
  globalThis.JSUtil = JSUtil;
})
