// The table of instance URLs that both validators — the CRD's CEL rules (run by a real API server in
// tests/crd.rs) and `InstanceUrl::parse` (unit test in src/servicenow/instance_url.rs) — must agree
// on. `include!`d by both; the includer brings `Case` and `UrlRule` into scope.
&[
    // accepted: plain and nested subdomains of both domains
    Case { url: "https://acme.service-now.com", rejected_by: None },
    Case { url: "https://acme.servicenowservices.com", rejected_by: None },
    Case { url: "https://dev12345.service-now.com", rejected_by: None },
    Case { url: "https://eu.acme.service-now.com", rejected_by: None },
    Case { url: "https://a.b.acme.servicenowservices.com", rejected_by: None },
    Case { url: "https://acme-test-2.service-now.com", rejected_by: None },
    // scheme
    Case { url: "http://acme.service-now.com", rejected_by: Some(UrlRule::HttpsScheme) },
    Case { url: "acme.service-now.com", rejected_by: Some(UrlRule::HttpsScheme) },
    Case { url: "HTTPS://acme.service-now.com", rejected_by: Some(UrlRule::HttpsScheme) },
    Case { url: "ftp://acme.service-now.com", rejected_by: Some(UrlRule::HttpsScheme) },
    Case { url: "", rejected_by: Some(UrlRule::HttpsScheme) },
    Case { url: " https://acme.service-now.com", rejected_by: Some(UrlRule::HttpsScheme) },
    // whitespace and non-ASCII
    Case { url: "https://acme.service-now.com ", rejected_by: Some(UrlRule::PrintableAscii) },
    Case { url: "https://acme.service-now.com\n", rejected_by: Some(UrlRule::PrintableAscii) },
    Case { url: "https://ac me.service-now.com", rejected_by: Some(UrlRule::PrintableAscii) },
    Case { url: "https://acmé.service-now.com", rejected_by: Some(UrlRule::PrintableAscii) },
    Case { url: "https://acme.sérvice-now.com", rejected_by: Some(UrlRule::PrintableAscii) },
    // user info, both ways round
    Case { url: "https://evil.example@acme.service-now.com", rejected_by: Some(UrlRule::NoUserInfo) },
    Case { url: "https://acme.service-now.com@evil.example", rejected_by: Some(UrlRule::NoUserInfo) },
    Case { url: "https://user:pass@acme.service-now.com", rejected_by: Some(UrlRule::NoUserInfo) },
    // port
    Case { url: "https://acme.service-now.com:443", rejected_by: Some(UrlRule::NoPort) },
    Case { url: "https://acme.service-now.com:8443", rejected_by: Some(UrlRule::NoPort) },
    Case { url: "https://[::1]", rejected_by: Some(UrlRule::NoPort) },
    // path, trailing slash
    Case { url: "https://acme.service-now.com/", rejected_by: Some(UrlRule::NoPath) },
    Case { url: "https://acme.service-now.com/now", rejected_by: Some(UrlRule::NoPath) },
    Case { url: "https://acme.service-now.com/api/now/table/incident", rejected_by: Some(UrlRule::NoPath) },
    // query, fragment
    Case { url: "https://acme.service-now.com?x=1", rejected_by: Some(UrlRule::NoQuery) },
    Case { url: "https://acme.service-now.com#top", rejected_by: Some(UrlRule::NoFragment) },
    // case
    Case { url: "https://ACME.service-now.com", rejected_by: Some(UrlRule::LowerCaseHost) },
    Case { url: "https://acme.Service-Now.com", rejected_by: Some(UrlRule::LowerCaseHost) },
    // punycode
    Case { url: "https://xn--acm-bma.service-now.com", rejected_by: Some(UrlRule::NoPunycode) },
    Case { url: "https://eu.xn--acm-bma.service-now.com", rejected_by: Some(UrlRule::NoPunycode) },
    // not a subdomain of the two domains
    Case { url: "https://service-now.com", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://servicenowservices.com", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://service-now.com.evil.example", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://acme.service-now.com.evil.example", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://evilservice-now.com", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://acme.evilservice-now.com.example", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://servicenow.example.com", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://acme.service-now.com.", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://.service-now.com", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://acme..service-now.com", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://-acme.service-now.com", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://acme-.service-now.com", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://acme_1.service-now.com", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://127.0.0.1", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://10.1.2.3", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://acme.service-now.co", rejected_by: Some(UrlRule::AllowedDomain) },
    Case { url: "https://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.service-now.com", rejected_by: Some(UrlRule::AllowedDomain) },
    // length: DNS carries at most 253 characters (the CRD also caps the URL at 300)
    Case { url: "https://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.service-now.com", rejected_by: None },
    Case { url: "https://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.service-now.com", rejected_by: Some(UrlRule::HostLength) },
]
