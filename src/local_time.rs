//! Wall-clock times in the user's time zone, as `status` shows them: `14:02`
//! today, `2025-03-01 14:02` on another day (the C library's `localtime_r`
//! reads `TZ` and `/etc/localtime`).

/// `unix` (seconds) as local time: `HH:MM` if today, else `YYYY-MM-DD HH:MM`.
pub fn format(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (Some(t), Some(today)) = (broken_down(unix), broken_down(now)) else {
        return format!("{unix} (unix time)");
    };
    let hm = format!("{:02}:{:02}", t.tm_hour, t.tm_min);
    if (t.tm_year, t.tm_yday) == (today.tm_year, today.tm_yday) {
        hm
    } else {
        format!(
            "{:04}-{:02}-{:02} {hm}",
            t.tm_year + 1900,
            t.tm_mon + 1,
            t.tm_mday
        )
    }
}

fn broken_down(unix: u64) -> Option<libc::tm> {
    let t = libc::time_t::try_from(unix).ok()?;
    // SAFETY: `tm` is plain data; localtime_r fills it and keeps no pointer.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        (!libc::localtime_r(&t, &mut tm).is_null()).then_some(tm)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_time_today_shows_hours_and_minutes_only() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let today = super::format(now);
        assert_eq!(today.len(), 5, "{today}");
        assert_eq!(&today[2..3], ":");
        let long_ago = super::format(86_400 * 400);
        assert!(long_ago.starts_with("1971-"), "{long_ago}");
    }
}
