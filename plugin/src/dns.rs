//! `kubectl mailroom dns NAME`: a MailDomain's records as a zone-file snippet (RFC 1035 5.1).

use serde_json::Value;
use std::fmt::Write as _;

/// The zone-file lines for `status.dnsRecords` of MailDomain `md` (its JSON), with `ttl`.
pub fn zone_snippet(md: &Value, ttl: u64) -> String {
    let name = md["metadata"]["name"].as_str().unwrap_or("?");
    let domain = md["spec"]["domain"].as_str().unwrap_or("?");
    let mut out = format!("; MailDomain {name} ({domain}): records from status.dnsRecords\n");
    let records = md["status"]["dnsRecords"].as_array().cloned().unwrap_or_default();
    if records.is_empty() {
        out.push_str("; none yet: the operator lists them once it has reconciled the MailDomain\n");
        return out;
    }
    for r in &records {
        let owner = r["name"].as_str().unwrap_or("?");
        let purpose = r["purpose"].as_str().unwrap_or("?");
        let strings: Vec<&str> = r["value"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let joined: String = strings.concat();
        let observed: Vec<&str> = r["observed"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let served = if observed.contains(&joined.as_str()) {
            "served"
        } else {
            "not served yet"
        };
        let key = r["key"]
            .as_str()
            .map(|k| format!(", {k} key"))
            .unwrap_or_default();
        let _ = writeln!(out, "; {purpose}{key}: {served}");
        let quoted: Vec<String> = strings.iter().map(|s| quote(s)).collect();
        let _ = writeln!(out, "{owner}. {ttl} IN TXT {}", quoted.join(" "));
    }
    out
}

/// A character-string in zone-file form: quoted, with `"` and `\` escaped (RFC 1035 5.1).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_become_quoted_txt_lines_with_their_state() {
        let md = json!({
            "metadata": {"name": "example-com"},
            "spec": {"domain": "example.com"},
            "status": {"dnsRecords": [
                {"name": "mailroom._domainkey.example.com", "purpose": "dkim", "key": "active",
                 "value": ["v=DKIM1; k=rsa; p=AAAA", "BBBB"], "observed": ["v=DKIM1; k=rsa; p=AAAABBBB"]},
                {"name": "example.com", "purpose": "spf", "value": ["v=spf1 \"x\" -all"], "observed": []}
            ]}
        });
        let text = zone_snippet(&md, 300);
        assert!(text.contains("; dkim, active key: served\nmailroom._domainkey.example.com. 300 IN TXT \"v=DKIM1; k=rsa; p=AAAA\" \"BBBB\"\n"), "{text}");
        assert!(
            text.contains("; spf: not served yet\nexample.com. 300 IN TXT \"v=spf1 \\\"x\\\" -all\"\n"),
            "{text}"
        );
    }

    #[test]
    fn a_domain_without_records_says_so() {
        let md = json!({"metadata": {"name": "a"}, "spec": {"domain": "a.test"}, "status": {}});
        assert!(zone_snippet(&md, 3600).contains("none yet"));
    }
}
