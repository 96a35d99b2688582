//! The plain HTML pages a person sees at the end of the consent flow.

use axum::{
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};

/// A page with a title and a paragraph, with `status`.
pub fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1 id=\"title\">{title}</h1><p id=\"message\">{message}</p></body></html>\n",
        title = escape(title),
        message = escape(message),
    );
    (status, Html(body)).into_response()
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_in_messages_is_escaped() {
        assert_eq!(
            super::escape("<script>\"x\" & 'y'"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;"
        );
    }
}
