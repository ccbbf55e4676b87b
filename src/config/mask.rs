//! Secrets out of URLs: the password of `scheme://user:password@host` and the `password` and
//! `sslpassword` query parameters become `****` in everything the daemon prints.

/// Replaces the password of `scheme://user:password@host/...` with `****`.
/// An error text with the password of every URL in it masked (client errors may echo the URL).
pub fn scrub_urls(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            if w.contains("://") {
                mask_url(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    // The last '@' ends the user info even when an unencoded password holds '/', '?' or '#';
    // an '@' further on (in a query) only makes this mask more than it must.
    let masked = match rest.rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:****{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    };
    mask_query_secrets(&masked)
}

/// Masks the values of `password` and `sslpassword` query parameters (which sqlx accepts).
fn mask_query_secrets(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_string();
    };
    let params: Vec<String> = url[q + 1..]
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _))
                if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword") =>
            {
                format!("{k}=****")
            }
            _ => kv.to_string(),
        })
        .collect();
    format!("{}?{}", &url[..q], params.join("&"))
}
