//! Small text helpers of the HTML report: escaping and human-readable numbers, sizes, times.

use std::fmt::Write;

/// Escapes text for HTML element content and double-quoted attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value for an HTML `id`: ASCII letters, digits and `-` only.
pub(crate) fn slug(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// `2026-11-27 05:02:52` (UTC) for unix milliseconds.
pub(crate) fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A `<time>` element: UTC text, machine-readable `datetime`; the report's script adds local time.
pub(crate) fn time_el(ms: i64) -> String {
    format!(
        "<time datetime=\"{}\" data-ms=\"{ms}\">{}</time>",
        utc(ms).replace(' ', "T") + "Z",
        utc(ms)
    )
}

/// `0.4s`, `12.0s`, `3m07s`, `2h05m`.
pub(crate) fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// `512 B`, `1.5 KiB`, `3.2 GiB`.
pub(crate) fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n.abs() < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v.abs() < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `1.23M`, `45.6k`, `789`.
pub(crate) fn count(n: i64) -> String {
    let v = n as f64;
    if n.abs() >= 1_000_000_000 {
        format!("{:.2}G", v / 1e9)
    } else if n.abs() >= 1_000_000 {
        format!("{:.2}M", v / 1e6)
    } else if n.abs() >= 10_000 {
        format!("{:.1}k", v / 1e3)
    } else {
        n.to_string()
    }
}

/// A metric value with about four significant digits; `–` for none.
pub(crate) fn num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if !v.is_finite() => v.to_string(),
        Some(0.0) => "0".into(),
        Some(v) if v.abs() >= 1e5 || v.abs() < 1e-3 => format!("{v:.3e}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.4}"),
    }
}

/// A signed difference, e.g. `−0.4123` or `+0.0100`.
pub(crate) fn delta(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v < 0.0 => format!("−{}", num(Some(-v))),
        Some(v) => format!("+{}", num(Some(v))),
    }
}

/// The first `n` characters of a hash, the whole one in a tooltip.
pub(crate) fn short_hash(hash: &str, n: usize) -> String {
    let short: String = hash.chars().take(n).collect();
    format!("<code title=\"{}\">{}</code>", esc(hash), esc(&short))
}

/// Appends `<tr><td>…</td>…</tr>` with cells that are already HTML.
pub(crate) fn row(out: &mut String, cells: &[String]) {
    out.push_str("<tr>");
    for c in cells {
        let _ = write!(out, "<td>{c}</td>");
    }
    out.push_str("</tr>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_755_772_000), "2026-11-27 05:02:52");
        assert_eq!(utc(-1000), "1969-12-31 23:59:59");
    }

    #[test]
    fn escapes_and_formats() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(slug("Pre train/L0"), "pre-train-l0");
        assert_eq!(duration(400), "0.4s");
        assert_eq!(duration(187_000), "3m07s");
        assert_eq!(duration(7_500_000), "2h05m");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(count(1_234_567), "1.23M");
        assert_eq!(num(Some(2.345_678)), "2.3457");
        assert_eq!(num(Some(0.000_3)), "3.000e-4");
        assert_eq!(num(None), "–");
        assert_eq!(delta(Some(-0.5)), "−0.5000");
    }
}
