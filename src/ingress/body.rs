//! Request bodies: content-type check, a hard size limit enforced while reading (413),
//! and JSON decoding whose errors name the field but never echo the submitted value.
use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::registry::FieldError;

/// The request's media type, lower-cased, without parameters.
pub fn media_type(req: &HttpRequest) -> Option<String> {
    essence(req).map(str::to_ascii_lowercase)
}

/// The media type as sent (any case), without parameters.
fn essence(req: &HttpRequest) -> Option<&str> {
    let ct = req.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(ct.split(';').next()?.trim())
}

pub fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    // Every scan passes here: compare without lower-casing into a new string.
    match essence(req) {
        Some(t) if t.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType("expected Content-Type: application/json")),
    }
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
pub async fn read(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    if let Some(len) =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::MalformedJson("the request body could not be read".into()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Keeps a reported field name printable and short (unknown field names come from the client).
fn safe_name(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']')).take(64).collect()
}

fn between_backticks(msg: &str) -> Option<&str> {
    let start = msg.find('`')? + 1;
    let end = start + msg[start..].find('`')?;
    Some(&msg[start..end])
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() || path == "." {
        safe_name(name)
    } else {
        format!("{}.{}", safe_name(path), safe_name(name))
    }
}

/// Decodes JSON into `T`, classifying errors into precise codes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Nearly every body is valid. Tracking the path costs an allocation per key (a fifth of
    // a scan's allocations), so decode plainly first; only a body that fails is decoded
    // again with the path, to name its field. Decoding is deterministic: same error.
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(_) => decode_naming_the_field(bytes),
    }
}

fn decode_naming_the_field<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let err = match result {
        // Trailing bytes after the value make the whole body malformed.
        Ok(v) => {
            return de.end().map(|()| v).map_err(|e| {
                ApiError::MalformedJson(format!("trailing characters at line {} column {}", e.line(), e.column()))
            })
        }
        Err(e) => e,
    };
    let path = err.path().to_string();
    let inner = err.into_inner();
    use serde_json::error::Category;
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            Err(ApiError::MalformedJson(format!("malformed JSON at line {} column {}", inner.line(), inner.column())))
        }
        Category::Data => {
            let msg = inner.to_string();
            if msg.starts_with("missing field") {
                let name = between_backticks(&msg).unwrap_or("");
                Err(ApiError::MissingField(join(&path, name)))
            } else if msg.starts_with("unknown field") {
                // serde_path_to_error's path already ends at the unknown key.
                let name = between_backticks(&msg).unwrap_or("");
                let full = if path.ends_with(name) { safe_name(&path) } else { join(&path, name) };
                Err(ApiError::UnknownField(full))
            } else if msg.starts_with("unknown variant") || msg.starts_with("invalid value") {
                Err(ApiError::InvalidField(FieldError {
                    field: safe_name(&path),
                    message: "has a value that is not allowed",
                }))
            } else {
                Err(ApiError::InvalidType(safe_name(&path)))
            }
        }
    }
}

/// Content type, size limit and decoding in one call, for JSON routes.
pub async fn json<T: DeserializeOwned>(req: &HttpRequest, payload: web::Payload, limit: usize) -> Result<T, ApiError> {
    require_json(req)?;
    let bytes = read(req, payload, limit).await?;
    decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        year: u16,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Inner,
    }

    fn code_and_field(body: &str) -> (String, String) {
        match decode::<Outer>(body.as_bytes()) {
            Ok(_) => ("OK".into(), String::new()),
            Err(e) => (
                e.code().to_string(),
                match &e {
                    ApiError::MissingField(f) | ApiError::UnknownField(f) | ApiError::InvalidType(f) => f.clone(),
                    ApiError::InvalidField(fe) => fe.field.clone(),
                    _ => String::new(),
                },
            ),
        }
    }

    #[test]
    fn errors_name_the_field_and_hide_the_value() {
        assert_eq!(code_and_field("{"), ("MALFORMED_JSON".into(), "".into()));
        assert_eq!(code_and_field(r#"{"name":"a","inner":{"year":1}} x"#), ("MALFORMED_JSON".into(), "".into()));
        assert_eq!(code_and_field(r#"{"name":"a"}"#), ("MISSING_FIELD".into(), "inner".into()));
        assert_eq!(code_and_field(r#"{"name":"a","inner":{}}"#), ("MISSING_FIELD".into(), "inner.year".into()));
        assert_eq!(
            code_and_field(r#"{"name":"a","inner":{"year":1,"x":2}}"#),
            ("UNKNOWN_FIELD".into(), "inner.x".into())
        );
        assert_eq!(
            code_and_field(r#"{"name":"a","inner":{"year":"SECRET"}}"#),
            ("INVALID_TYPE".into(), "inner.year".into())
        );
        assert_eq!(
            code_and_field(r#"{"name":"a","inner":{"year":99999}}"#),
            ("INVALID_FIELD".into(), "inner.year".into())
        );
        let e = decode::<Outer>(br#"{"name":"a","inner":{"year":"SECRET"}}"#).unwrap_err();
        assert!(!e.message().contains("SECRET"));
    }

    #[test]
    fn json_media_type_is_matched_in_any_case_and_with_parameters() {
        let with =
            |ct: &str| actix_web::test::TestRequest::default().insert_header(("Content-Type", ct)).to_http_request();
        for ct in ["application/json", "Application/JSON; charset=UTF-8", " application/json ;x=y"] {
            assert!(require_json(&with(ct)).is_ok(), "{ct}");
        }
        for ct in ["text/plain", "application/jsonx", "application/x-ndjson", ""] {
            assert_eq!(require_json(&with(ct)).unwrap_err().code(), "UNSUPPORTED_MEDIA_TYPE", "{ct}");
        }
        let none = actix_web::test::TestRequest::default().to_http_request();
        assert!(require_json(&none).is_err());
        assert_eq!(media_type(&with("Text/CSV; header=present")).as_deref(), Some("text/csv"));
    }

    /// Valid bodies skip the path-tracking decoder; both must give the same answer for any
    /// body, or a valid body could be refused (or an invalid one let through) by the fast path.
    #[test]
    fn the_plain_decode_and_the_field_naming_one_agree() {
        let bodies = [
            r#"{"name":"a","inner":{"year":1}}"#,
            " \n{\"name\":\"a\",\"inner\":{\"year\":1}}\r\n\t ",
            r#"{"inner":{"year":7},"name":"b\u00e9"}"#,
            r#"{"name":"a","inner":{"year":1}} x"#,
            r#"{"name":"a","inner":{"year":1}}{}"#,
            r#"{"name":"a","name":"b","inner":{"year":1}}"#,
            r#"{"name":"a","inner":{"year":1,"x":2}}"#,
            r#"{"name":"a","inner":{"year":-1}}"#,
            r#"{"name":null,"inner":{"year":1}}"#,
            r#"[]"#,
            "",
        ];
        for body in bodies {
            let plain = format!("{:?}", decode::<Outer>(body.as_bytes()));
            let named = format!("{:?}", decode_naming_the_field::<Outer>(body.as_bytes()));
            assert_eq!(plain, named, "{body}");
        }
        let ok = decode::<Outer>(br#"{"name":"a","inner":{"year":1}}"#).expect("valid");
        assert_eq!((ok.name.as_str(), ok.inner.year), ("a", 1));
    }
}
