use super::*;
use crate::resources::schedule::Freeze;

fn ts(s: &str) -> Timestamp {
    s.parse().expect("test timestamp")
}

fn window(cron: &str, duration: &str, tz: &str) -> Window {
    Window {
        cron: cron.into(),
        duration: humantime::parse_duration(duration).expect("test duration"),
        time_zone: tz.into(),
    }
}

fn freeze(from: &str, to: &str, reason: Option<&str>) -> Freeze {
    Freeze {
        from: ts(from),
        to: ts(to),
        reason: reason.map(String::from),
    }
}

fn sched(windows: Vec<Window>, freezes: Vec<Freeze>) -> Schedule {
    Schedule { windows, freezes }
}

/// `None`: open; `Some(next)`: closed with the next opening at `next` (UTC).
fn state(s: &Schedule, now: &str) -> Option<Option<Timestamp>> {
    match window_state(s, ts(now)) {
        WindowState::Open => None,
        WindowState::Closed { next_open, .. } => Some(next_open.map(|z| z.timestamp())),
    }
}

#[test]
fn windows_through_dst_changes_and_midnight() {
    let berlin_0230 = sched(vec![window("30 2 * * *", "1h", "Europe/Berlin")], vec![]);
    let berlin_0930 = sched(vec![window("0 9 * * *", "1h", "Europe/Berlin")], vec![]);
    let berlin_day = sched(vec![window("0 0 * * *", "24h", "Europe/Berlin")], vec![]);
    let ny_0230 = sched(vec![window("30 2 * * *", "30m", "America/New_York")], vec![]);
    let ny_0130 = sched(vec![window("30 1 * * *", "20m", "America/New_York")], vec![]);
    let utc_night = sched(vec![window("0 22 * * *", "4h", "UTC")], vec![]);
    let berlin_night = sched(vec![window("0 22 * * *", "4h", "Europe/Berlin")], vec![]);
    let weekdays = sched(vec![window("0 9-16 * * 1-5", "1h", "Europe/Berlin")], vec![]);
    // (schedule, now, want: None open / Some(next opening))
    let cases: Vec<(&Schedule, &str, Option<&str>, &str)> = vec![
        // Europe/Berlin springs forward on 2027-03-28 at 02:00 CET (01:00Z) to 03:00 CEST: 02:30 does
        // not exist and fires at 03:30 CEST (01:30Z).
        (&berlin_0230, "2027-03-27T01:45:00Z", None, "02:30 CET the day before"),
        (
            &berlin_0230,
            "2027-03-28T01:15:00Z",
            Some("2027-03-28T01:30:00Z"),
            "gap: fires at 03:30 CEST",
        ),
        (
            &berlin_0230,
            "2027-03-28T01:30:00Z",
            None,
            "open at the shifted fire time",
        ),
        (&berlin_0230, "2027-03-28T02:29:00Z", None, "one real hour"),
        (
            &berlin_0230,
            "2027-03-28T02:30:00Z",
            Some("2027-03-29T00:30:00Z"),
            "next day 02:30 CEST",
        ),
        (
            &berlin_0930,
            "2027-03-27T12:00:00Z",
            Some("2027-03-28T07:00:00Z"),
            "09:00 CEST is 07:00Z",
        ),
        (&berlin_0930, "2027-03-27T08:30:00Z", None, "09:30 CET"),
        // Europe/Berlin falls back on 2026-10-25 at 03:00 CEST (01:00Z) to 02:00 CET: 02:30 happens
        // twice and fires once, at its first occurrence (00:30Z).
        (
            &berlin_0230,
            "2026-10-25T00:15:00Z",
            Some("2026-10-25T00:30:00Z"),
            "first 02:30 (CEST)",
        ),
        (
            &berlin_0230,
            "2026-10-25T01:15:00Z",
            None,
            "02:15 CET, 45 real minutes after 02:30 CEST",
        ),
        (
            &berlin_0230,
            "2026-10-25T01:31:00Z",
            Some("2026-10-26T01:30:00Z"),
            "no second fire at 02:30 CET",
        ),
        // Duration is real time: 24h from midnight CEST ends at 23:00 CET on the 25-hour day.
        (&berlin_day, "2026-10-25T21:30:00Z", None, "22:30 CET"),
        (
            &berlin_day,
            "2026-10-25T22:30:00Z",
            Some("2026-10-25T23:00:00Z"),
            "23:30 CET: 24h are over",
        ),
        // America/New_York springs forward on 2027-03-14 at 02:00 EST (07:00Z) to 03:00 EDT.
        (
            &ny_0230,
            "2027-03-13T07:45:00Z",
            None,
            "02:30 EST the day before is 07:30Z",
        ),
        (
            &ny_0230,
            "2027-03-14T07:00:00Z",
            Some("2027-03-14T07:30:00Z"),
            "gap: fires at 03:30 EDT",
        ),
        (&ny_0230, "2027-03-14T07:40:00Z", None, "03:40 EDT"),
        (
            &ny_0230,
            "2027-03-14T08:00:00Z",
            Some("2027-03-15T06:30:00Z"),
            "next day 02:30 EDT",
        ),
        // America/New_York falls back on 2026-11-01 at 02:00 EDT (06:00Z) to 01:00 EST.
        (&ny_0130, "2026-11-01T05:35:00Z", None, "01:35 EDT"),
        (
            &ny_0130,
            "2026-11-01T06:35:00Z",
            Some("2026-11-02T06:30:00Z"),
            "01:35 EST: no second fire",
        ),
        // A window crossing midnight.
        (&utc_night, "2026-11-27T01:00:00Z", None, "01:00 after a 22:00 fire"),
        (
            &utc_night,
            "2026-11-27T02:00:00Z",
            Some("2026-11-27T22:00:00Z"),
            "closed at 02:00 sharp",
        ),
        (
            &utc_night,
            "2026-11-27T21:59:59Z",
            Some("2026-11-27T22:00:00Z"),
            "just before",
        ),
        (&berlin_night, "2026-11-28T00:00:00Z", None, "01:00 CET"),
        // Weekdays 09:00-17:00 Berlin: Friday evening waits for Monday.
        (&weekdays, "2026-11-27T15:59:00Z", None, "Friday 16:59 CET"),
        (
            &weekdays,
            "2026-11-27T16:00:00Z",
            Some("2026-11-30T08:00:00Z"),
            "Friday 17:00 CET",
        ),
        (
            &weekdays,
            "2026-11-29T12:00:00Z",
            Some("2026-11-30T08:00:00Z"),
            "Sunday",
        ),
    ];
    for (s, now, want, what) in cases {
        let want = want.map(|w| Some(ts(w)));
        assert_eq!(state(s, now), want, "{what} at {now}: {:?}", s.windows[0]);
    }
}

#[test]
fn freezes_override_windows() {
    let day = || window("0 9 * * *", "8h", "UTC");
    let inside = sched(
        vec![day()],
        vec![freeze("2026-11-27T11:00:00Z", "2026-11-27T12:00:00Z", Some("release"))],
    );
    let past_close = sched(
        vec![day()],
        vec![freeze("2026-11-27T16:00:00Z", "2026-11-27T18:00:00Z", None)],
    );
    let chained = sched(
        vec![day()],
        vec![
            freeze("2026-11-27T10:00:00Z", "2026-11-27T12:00:00Z", Some("first")),
            freeze("2026-11-27T11:30:00Z", "2026-11-27T14:00:00Z", Some("second")),
        ],
    );
    let only = sched(
        vec![],
        vec![freeze("2026-12-20T00:00:00Z", "2027-01-04T00:00:00Z", Some("holidays"))],
    );
    let cases: Vec<(&Schedule, &str, Option<&str>)> = vec![
        (&inside, "2026-11-27T10:00:00Z", None),
        (&inside, "2026-11-27T11:00:00Z", Some("2026-11-27T12:00:00Z")),
        (&inside, "2026-11-27T11:59:59Z", Some("2026-11-27T12:00:00Z")),
        (&inside, "2026-11-27T12:00:00Z", None),
        (&past_close, "2026-11-27T16:30:00Z", Some("2026-11-28T09:00:00Z")),
        (&chained, "2026-11-27T10:30:00Z", Some("2026-11-27T14:00:00Z")),
        (&chained, "2026-11-27T14:00:00Z", None),
        (&only, "2026-12-19T23:59:59Z", None),
        (&only, "2026-12-24T12:00:00Z", Some("2027-01-04T00:00:00Z")),
        (&only, "2027-01-04T00:00:00Z", None),
    ];
    for (s, now, want) in cases {
        let want = want.map(|w| Some(ts(w)));
        assert_eq!(state(s, now), want, "{now}: {:?}", s.freezes);
    }
    // Why: the freeze in force, its reason and where the chain of overlapping freezes ends.
    match window_state(&chained, ts("2026-11-27T10:30:00Z")) {
        WindowState::Closed {
            why: Why::Freeze { until, reason },
            ..
        } => {
            assert_eq!(until, ts("2026-11-27T14:00:00Z"));
            assert_eq!(reason.as_deref(), Some("first"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        window_state(&inside, ts("2026-11-27T08:00:00Z")),
        WindowState::Closed { why: Why::Window, .. }
    ));
    // A freeze that covers several fire times: the next opening is the first fire after it.
    let hourly = sched(
        vec![window("0 * * * *", "10m", "UTC")],
        vec![freeze("2026-11-27T00:30:00Z", "2026-12-03T05:30:00Z", None)],
    );
    assert_eq!(
        state(&hourly, "2026-11-28T00:00:00Z"),
        Some(Some(ts("2026-12-03T06:00:00Z")))
    );
}

#[test]
fn several_windows_are_ored_and_the_opening_is_shown_in_its_zone() {
    let s = sched(
        vec![
            window("0 9 * * *", "1h", "Europe/Berlin"),
            window("0 9 * * *", "1h", "America/New_York"),
        ],
        vec![],
    );
    assert_eq!(state(&s, "2026-11-27T08:30:00Z"), None); // Berlin 09:30
    assert_eq!(state(&s, "2026-11-27T14:30:00Z"), None); // New York 09:30
    match window_state(&s, ts("2026-11-27T10:00:00Z")) {
        WindowState::Closed {
            next_open: Some(z),
            why: Why::Window,
        } => assert_eq!(show(&z), "2026-11-27T09:00:00-05:00 (America/New_York)"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        window_state(&Schedule::default(), ts("2026-11-27T10:00:00Z")),
        WindowState::Open
    );
}

#[test]
fn crontab_fields() {
    let fires = |expr: &str, from: &str, n: usize| -> Vec<String> {
        let w = window(expr, "1m", "UTC");
        next_openings(&w, ts(from), n)
            .expect("valid")
            .iter()
            .map(|z| z.timestamp().to_string())
            .collect()
    };
    // 2026-11-27 is a Friday.
    assert_eq!(
        fires("*/20 9 * * *", "2026-11-27T09:10:00Z", 3),
        ["2026-11-27T09:20:00Z", "2026-11-27T09:40:00Z", "2026-11-28T09:00:00Z"]
    );
    assert_eq!(fires("0 0 * * 7", "2026-11-27T00:00:00Z", 1), ["2026-11-29T00:00:00Z"]);
    assert_eq!(
        fires("0 0 * * sun", "2026-11-27T00:00:00Z", 1),
        ["2026-11-29T00:00:00Z"]
    );
    assert_eq!(fires("0 0 * * 0", "2026-11-27T00:00:00Z", 1), ["2026-11-29T00:00:00Z"]);
    assert_eq!(fires("@monthly", "2026-11-27T00:00:00Z", 1), ["2026-12-01T00:00:00Z"]);
    assert_eq!(
        fires("0 12 1 JAN *", "2026-11-27T00:00:00Z", 1),
        ["2027-01-01T12:00:00Z"]
    );
    assert_eq!(fires("0 0 29 2 *", "2026-11-27T00:00:00Z", 1), ["2028-02-29T00:00:00Z"]);
    assert_eq!(
        fires("15 10 1,15 * *", "2026-11-27T00:00:00Z", 2),
        ["2026-12-01T10:15:00Z", "2026-12-15T10:15:00Z"]
    );
    // Both day fields restricted: either matches (the 13th, or a Friday), as in Vixie cron.
    assert_eq!(
        fires("0 0 13 * 5", "2026-11-27T00:00:00Z", 3),
        ["2026-12-04T00:00:00Z", "2026-12-11T00:00:00Z", "2026-12-13T00:00:00Z"]
    );
    // `*/n` in a day field still counts as unrestricted: both must match.
    assert_eq!(
        fires("0 0 */2 * 1", "2026-11-27T00:00:00Z", 1),
        ["2026-12-07T00:00:00Z"]
    );

    for bad in [
        "0 9 * *",
        "0 9 * * * *",
        "60 * * * *",
        "0 24 * * *",
        "0 0 0 * *",
        "0 0 * 13 *",
        "0 0 * * 8",
        "*/0 * * * *",
        "5-1 * * * *",
        "0 0 30 2 *",
        "0 0 31 4,6 *",
        "@reboot",
        "a b c d e",
        "-1 * * * *",
        "1-* * * * *",
        "",
    ] {
        assert!(Cron::parse(bad).is_err(), "{bad:?} must be refused");
    }
}

#[test]
fn validation_names_the_field() {
    let s = sched(
        vec![
            window("0 9-16 * * 1-5", "1h", "Europe/Berlin"),
            window("0 9 * *", "1h", "UTC"),
            window("0 9 * * *", "1h", "Europe/Berln"),
            window("0 9 * * *", "0s", "UTC"),
            window("0 9 * * *", "8d", "UTC"),
            window("0 9 * * *", "999999999w", "UTC"),
        ],
        vec![
            freeze("2026-12-20T00:00:00Z", "2027-01-04T00:00:00Z", None),
            freeze("2026-12-20T00:00:00Z", "2026-12-20T00:00:00Z", None),
            freeze("2026-12-20T00:00:00Z", "2026-12-19T00:00:00Z", None),
        ],
    );
    let fields: Vec<String> = validate(&s).into_iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        [
            "spec.schedule.windows[1].cron",
            "spec.schedule.windows[2].timeZone",
            "spec.schedule.windows[3].duration",
            "spec.schedule.windows[4].duration",
            "spec.schedule.windows[5].duration",
            "spec.schedule.freezes[1].to",
            "spec.schedule.freezes[2].to",
        ]
    );
    let messages = validate(&s).into_iter().map(|e| e.to_string()).collect::<Vec<_>>();
    assert!(messages[0].contains("want 5"), "{messages:?}");
    assert!(
        messages[1].contains("\"Europe/Berln\" is not a known IANA time zone"),
        "{messages:?}"
    );
}

#[test]
fn a_window_refused_by_validation_never_opens() {
    let s = sched(vec![window("0 9 * * *", "1h", "Mars/Olympus")], vec![]);
    assert_eq!(state(&s, "2026-11-27T09:30:00Z"), Some(None));
}
