//! Routing plan: loading, validation errors, matching and the example plans.

use dialplan::plan::{Attempt, LocalTime, Pattern, Plan, PlanError, Route, RuleProblem, Weekday};
use proptest::prelude::*;

const BASIC: &str = include_str!("../examples/basic.toml");
const CARRIER: &str = include_str!("../examples/carrier.toml");

fn at(weekday: Weekday, hh: u16, mm: u16) -> LocalTime {
    LocalTime {
        weekday,
        minutes: hh * 60 + mm,
    }
}

fn attempt(from: &str, to: &str, trunk: Option<&str>, t: LocalTime) -> Attempt {
    Attempt {
        from: from.into(),
        to: to.into(),
        source_trunk: trunk.map(Into::into),
        local_time: t,
    }
}

fn trunks(names: &[&str]) -> Route {
    Route::Trunks(names.iter().map(|s| s.to_string()).collect())
}

fn plan(text: &str) -> Plan {
    Plan::from_toml(text).unwrap_or_else(|e| panic!("{e}"))
}

/// A plan with one rule holding `conditions` (TOML lines) and a catch-all after it.
fn one_rule(conditions: &str) -> Plan {
    plan(&format!(
        "default_country_code = \"1\"\n[[rules]]\nname = \"r\"\n{conditions}\nagent = \"agt_hit\"\n\
         [[rules]]\nname = \"fallback\"\nreject = 480\n"
    ))
}

fn hits(p: &Plan, a: &Attempt) -> bool {
    p.route(a).rule.as_deref() == Some("r")
}

#[test]
fn basic_example_decisions() {
    let p = plan(BASIC);
    assert!(p.validate_trunks(&[]).is_empty());
    assert_eq!(p.numbers().len(), 2);
    let tenant = p.numbers()[0].tenant.as_deref();
    assert_eq!(tenant, Some("acme"));

    let cases = [
        // National number normalised with the default country code "1".
        (
            "4155550123",
            "(415) 555-0100",
            at(Weekday::Tue, 9, 0),
            Route::Agent("agt_support_day".into()),
            Some("support-office-hours"),
        ),
        (
            "+14155550123",
            "+14155550100",
            at(Weekday::Fri, 17, 59),
            Route::Agent("agt_support_day".into()),
            Some("support-office-hours"),
        ),
        (
            "+14155550123",
            "+14155550100",
            at(Weekday::Fri, 18, 0),
            Route::Agent("agt_support_night".into()),
            Some("support-night"),
        ),
        (
            "+14155550123",
            "+14155550100",
            at(Weekday::Sat, 7, 59),
            Route::Agent("agt_support_night".into()),
            Some("support-night"),
        ),
        (
            "+14155550123",
            "+14155550100",
            at(Weekday::Sat, 12, 0),
            Route::Reject {
                sip_code: 486,
                reason: "Busy Here".into(),
            },
            Some("support-weekend"),
        ),
        (
            "+12025550666",
            "+14155550100",
            at(Weekday::Tue, 9, 0),
            Route::Reject {
                sip_code: 603,
                reason: "Declined".into(),
            },
            Some("blocklist"),
        ),
        (
            "anonymous",
            "+14155550199",
            at(Weekday::Tue, 9, 0),
            Route::Proxy {
                number: dialplan::e164::parse_strict("+14155550199").unwrap(),
            },
            Some("proxy-pool"),
        ),
        (
            "+14155550123",
            "+14155550777",
            at(Weekday::Tue, 9, 0),
            Route::Reject {
                sip_code: 404,
                reason: "no route".into(),
            },
            None,
        ),
    ];
    for (from, to, t, route, rule) in cases {
        let d = p.route(&attempt(from, to, None, t));
        assert_eq!(
            d.route, route,
            "{from} -> {to} at {t}: {:#?}",
            d.explanation
        );
        assert_eq!(d.rule.as_deref(), rule, "{from} -> {to} at {t}");
    }
}

#[test]
fn carrier_example_decisions() {
    let p = plan(CARRIER);
    let known = [
        "carrier-a",
        "carrier-b",
        "us-primary",
        "us-backup",
        "cheap-night",
        "uk-mobile",
        "eu",
        "intl",
    ];
    assert_eq!(p.validate_trunks(&known), vec![]);
    let missing = p.validate_trunks(&[
        "carrier-a",
        "carrier-b",
        "us-primary",
        "uk-mobile",
        "eu",
        "intl",
    ]);
    let msgs: Vec<String> = missing.iter().map(|e| e.to_string()).collect();
    assert_eq!(missing.len(), 2, "{msgs:?}");
    assert!(
        msgs[0].contains("rules[3] \"nanp\"") && msgs[0].contains("us-backup"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].contains("\"uk-mobile-night\"") && msgs[1].contains("cheap-night"),
        "{msgs:?}"
    );
    assert!(msgs.iter().all(|m| m.starts_with("line ")), "{msgs:?}");

    let day = at(Weekday::Wed, 14, 0);
    let cases: [(&str, &str, Option<&str>, LocalTime, Route); 11] = [
        (
            "+442070000000",
            "0909 123 4567",
            Some("carrier-a"),
            day,
            Route::Reject {
                sip_code: 403,
                reason: "Premium rate barred".into(),
            },
        ),
        (
            "+442070000000",
            "020 7183 8750",
            Some("carrier-a"),
            day,
            Route::Agent("agt_wholesale_ivr".into()),
        ),
        // Same number from the other carrier: owned-number rule wants carrier-a.
        (
            "+442070000000",
            "+442071838750",
            Some("carrier-b"),
            day,
            Route::Reject {
                sip_code: 403,
                reason: "Forbidden".into(),
            },
        ),
        (
            "+442070000000",
            "+14155550100",
            Some("carrier-b"),
            day,
            trunks(&["us-primary", "us-backup"]),
        ),
        // N excludes 0/1 in the exchange code.
        (
            "+442070000000",
            "+14151550100",
            Some("carrier-b"),
            day,
            Route::Reject {
                sip_code: 404,
                reason: "no route".into(),
            },
        ),
        (
            "+442070000000",
            "07700 900123",
            None,
            at(Weekday::Sun, 23, 30),
            trunks(&["cheap-night", "uk-mobile"]),
        ),
        (
            "+442070000000",
            "07700 900123",
            None,
            at(Weekday::Mon, 5, 59),
            trunks(&["cheap-night", "uk-mobile"]),
        ),
        (
            "+442070000000",
            "07700 900123",
            None,
            at(Weekday::Mon, 6, 0),
            trunks(&["uk-mobile"]),
        ),
        // 076 (pagers) is outside [1-57-9]: plain mobile route even at night.
        (
            "+442070000000",
            "07600 900123",
            None,
            at(Weekday::Sun, 23, 30),
            trunks(&["uk-mobile"]),
        ),
        ("+442070000000", "+4930123456", None, day, trunks(&["eu"])),
        ("+12025550100", "+4930123456", None, day, trunks(&["intl"])),
    ];
    for (from, to, trunk, t, route) in cases {
        let d = p.route(&attempt(from, to, trunk, t));
        assert_eq!(
            d.route, route,
            "{from} -> {to} via {trunk:?} at {t}: {:#?}",
            d.explanation
        );
    }
    let far = p.route(&attempt("+12025550100", "+81312345678", None, day));
    assert_eq!(far.rule, None);
    assert_eq!(far.explanation.len(), p.rules().len() + 1);
}

#[test]
fn explanation_names_each_rule_tried() {
    let p = plan(BASIC);
    let d = p.route(&attempt(
        "+14155550123",
        "+14155550100",
        None,
        at(Weekday::Sat, 12, 0),
    ));
    assert_eq!(d.explanation.len(), 4, "{:#?}", d.explanation);
    assert!(
        d.explanation[0].contains("\"blocklist\" skipped")
            && d.explanation[0].contains("caller +14155550123")
    );
    assert!(
        d.explanation[1].contains("sat 12:00 is outside mon,tue,wed,thu,fri 08:00–18:00"),
        "{}",
        d.explanation[1]
    );
    assert!(
        d.explanation[3].contains("\"support-weekend\" matched"),
        "{}",
        d.explanation[3]
    );
    assert_eq!(d.to_e164.unwrap().as_str(), "+14155550100");
    assert_eq!(d.from_e164.unwrap().as_str(), "+14155550123");
}

#[test]
fn unusable_called_number_is_404() {
    let p = plan(BASIC);
    for to in ["", "abc", "123", "+0123456789"] {
        let d = p.route(&attempt("+14155550123", to, None, at(Weekday::Mon, 9, 0)));
        assert!(
            matches!(d.route, Route::Reject { sip_code: 404, .. }),
            "{to:?}: {d:?}"
        );
        assert_eq!(d.rule, None);
        assert_eq!(d.to_e164, None);
    }
}

#[test]
fn number_conditions_table() {
    let t = at(Weekday::Mon, 12, 0);
    let cases: &[(&str, &str, &str, bool)] = &[
        (
            "to = { exact = \"+14155550100\" }",
            "+1",
            "+14155550100",
            true,
        ),
        (
            "to = { exact = \"+14155550100\" }",
            "+1",
            "+14155550101",
            false,
        ),
        ("to = { prefix = \"+44\" }", "+1", "+442071838750", true),
        ("to = { prefix = \"+44\" }", "+1", "+4930123456", false),
        (
            "to = { pattern = \"+1NXXNXXXXXX\" }",
            "+1",
            "+14155550100",
            true,
        ),
        (
            "to = { pattern = \"+1NXXNXXXXXX\" }",
            "+1",
            "+11155550100",
            false,
        ),
        (
            "to = { pattern = \"+1NXXNXXXXXX\" }",
            "+1",
            "+141555501000",
            false,
        ),
        ("to = { pattern = \"+1Z.\" }", "+1", "+14155550100", true),
        (
            "to = { pattern = \"+44[1-3]X.\" }",
            "+1",
            "+442071838750",
            true,
        ),
        (
            "to = { pattern = \"+44[1-3]X.\" }",
            "+1",
            "+447700900123",
            false,
        ),
        (
            "from = { prefix = \"+1202\" }",
            "+12025550100",
            "+14155550100",
            true,
        ),
        (
            "from = { prefix = \"+1202\" }",
            "+14155550100",
            "+14155550100",
            false,
        ),
        // Caller id normalised with the default country code before matching.
        (
            "from = { exact = \"+12025550100\" }",
            "202-555-0100",
            "+14155550100",
            true,
        ),
        (
            "from = { pattern = \"+1X.\" }",
            "anonymous",
            "+14155550100",
            false,
        ),
    ];
    for (cond, from, to, want) in cases {
        let p = one_rule(cond);
        let a = attempt(from, to, None, t);
        assert_eq!(
            hits(&p, &a),
            *want,
            "{cond} from {from} to {to}: {:#?}",
            p.route(&a).explanation
        );
    }
}

#[test]
fn source_trunk_conditions() {
    let t = at(Weekday::Mon, 12, 0);
    let one = one_rule("source_trunk = \"a\"");
    let many = one_rule("source_trunk = [\"a\", \"b\"]");
    let to = "+14155550100";
    assert!(hits(&one, &attempt(to, to, Some("a"), t)));
    assert!(!hits(&one, &attempt(to, to, Some("b"), t)));
    assert!(!hits(&one, &attempt(to, to, None, t)));
    assert!(hits(&many, &attempt(to, to, Some("b"), t)));
    assert!(!hits(&many, &attempt(to, to, Some("c"), t)));
}

#[test]
fn time_windows_table() {
    use Weekday::*;
    let day = "time = { days = [\"mon\", \"fri\"], start = \"08:00\", end = \"18:00\" }";
    let night = "time = { days = [\"fri\"], start = \"22:00\", end = \"06:00\" }";
    let sunday_night = "time = { days = [\"sun\"], start = \"23:00\", end = \"01:00\" }";
    let all_day_weekend = "time = { days = [\"sat\", \"SUN\"] }";
    let to_midnight = "time = { start = \"20:00\", end = \"24:00\" }";
    let cases: &[(&str, LocalTime, bool)] = &[
        (day, at(Mon, 8, 0), true),
        (day, at(Mon, 7, 59), false),
        (day, at(Mon, 17, 59), true),
        (day, at(Mon, 18, 0), false),
        (day, at(Tue, 12, 0), false),
        (day, at(Fri, 12, 0), true),
        (night, at(Fri, 21, 59), false),
        (night, at(Fri, 22, 0), true),
        (night, at(Fri, 23, 59), true),
        (night, at(Sat, 0, 0), true),
        (night, at(Sat, 5, 59), true),
        (night, at(Sat, 6, 0), false),
        // Friday's morning belongs to Thursday's window, which is not listed.
        (night, at(Fri, 3, 0), false),
        (night, at(Sat, 22, 30), false),
        // Weekday wrap: Sunday's window runs into Monday.
        (sunday_night, at(Mon, 0, 30), true),
        (sunday_night, at(Sun, 0, 30), false),
        (sunday_night, at(Sun, 23, 0), true),
        (all_day_weekend, at(Sat, 0, 0), true),
        (all_day_weekend, at(Sun, 23, 59), true),
        (all_day_weekend, at(Mon, 0, 0), false),
        (to_midnight, at(Wed, 23, 59), true),
        (to_midnight, at(Wed, 19, 59), false),
        (
            day,
            LocalTime {
                weekday: Mon,
                minutes: 9999,
            },
            false,
        ),
    ];
    let n = "+14155550100";
    for (cond, t, want) in cases {
        let p = one_rule(cond);
        assert_eq!(hits(&p, &attempt(n, n, None, *t)), *want, "{cond} at {t}");
    }
}

#[test]
fn first_match_wins() {
    let p = plan(
        r#"
[[rules]]
name = "narrow"
to = { exact = "+14155550100" }
agent = "agt_first"

[[rules]]
name = "broad"
to = { prefix = "+1" }
agent = "agt_second"

[[rules]]
name = "shadowed"
to = { exact = "+14155550100" }
agent = "agt_never"
"#,
    );
    let t = at(Weekday::Mon, 0, 0);
    let d = p.route(&attempt("+1", "+14155550100", None, t));
    assert_eq!(d.route, Route::Agent("agt_first".into()));
    let d = p.route(&attempt("+1", "+14155550199", None, t));
    assert_eq!(d.route, Route::Agent("agt_second".into()));
    assert_eq!(d.rule.as_deref(), Some("broad"));
    // Without a default country code a national number cannot be routed.
    let d = p.route(&attempt("+1", "4155550100", None, t));
    assert!(matches!(d.route, Route::Reject { sip_code: 404, .. }));
}

/// Loads `text`, expects an error, checks it names `needle`s and has a line number.
fn load_err(text: &str, line: usize, needles: &[&str]) -> PlanError {
    let e = Plan::from_toml(text).expect_err(text);
    let msg = e.to_string();
    assert_eq!(e.line(), Some(line), "{msg}");
    assert!(msg.starts_with(&format!("line {line}: ")), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "{msg:?} lacks {n:?}");
    }
    e
}

#[test]
fn validation_errors_name_rule_and_line() {
    let head = "default_country_code = \"1\"\n[[rules]]\nname = \"ok\"\nagent = \"agt_a\"\n[[rules]]\nname = \"bad\"\n";
    // (rule body lines after `name`, line of the error, words in the message)
    let cases: &[(&str, usize, &[&str])] = &[
        (
            "reject = 486\nagent = \"agt_b\"",
            8,
            &["rules[1] \"bad\"", "more than one action", "agent, reject"],
        ),
        (
            "proxy = true\ntrunks = [\"x\"]",
            8,
            &["rules[1] \"bad\"", "proxy, trunks"],
        ),
        (
            "to = { prefix = \"+1\" }",
            5,
            &["rules[1] \"bad\"", "no action"],
        ),
        ("proxy = false", 5, &["rules[1] \"bad\"", "no action"]),
        ("reject = 700", 7, &["rules[1] \"bad\"", "700", "400–699"]),
        ("reject = 399", 7, &["399"]),
        ("reject = -1", 7, &["-1"]),
        (
            "agent = \"a\"\nreason = \"x\"",
            8,
            &["rules[1] \"bad\"", "reason"],
        ),
        ("trunks = []", 7, &["rules[1] \"bad\"", "`trunks` is empty"]),
        (
            "source_trunk = []\nagent = \"a\"",
            7,
            &["`source_trunk` is empty"],
        ),
        ("agent = \"\"", 7, &["agent id is empty"]),
        (
            "to = { exact = \"14155550100\" }\nagent = \"a\"",
            7,
            &["rules[1] \"bad\"", "`to` number", "14155550100"],
        ),
        (
            "from = { exact = \"+1415\" }\nagent = \"a\"",
            7,
            &["`from` number", "digits"],
        ),
        (
            "to = { prefix = \"44\" }\nagent = \"a\"",
            7,
            &["`to` prefix \"44\""],
        ),
        ("to = { prefix = \"+4x\" }\nagent = \"a\"", 7, &["prefix"]),
        (
            "to = { pattern = \"+1[5-3]X\" }\nagent = \"a\"",
            7,
            &["rules[1] \"bad\"", "`to` pattern", "backwards"],
        ),
        (
            "to = { pattern = \"+1[2\" }\nagent = \"a\"",
            7,
            &["without a closing"],
        ),
        (
            "to = { pattern = \"1NXX\" }\nagent = \"a\"",
            7,
            &["start with '+'"],
        ),
        ("to = { pattern = \"+1Q\" }\nagent = \"a\"", 7, &["'Q'"]),
        (
            "to = { exact = \"+14155550100\", prefix = \"+1\" }\nagent = \"a\"",
            7,
            &["exactly one of exact, prefix, pattern"],
        ),
        ("to = {}\nagent = \"a\"", 7, &["exactly one of"]),
        (
            "time = { start = \"25:00\", end = \"06:00\" }\nagent = \"a\"",
            7,
            &["rules[1] \"bad\"", "time", "25:00"],
        ),
        (
            "time = { start = \"8:00\", end = \"18:00\" }\nagent = \"a\"",
            7,
            &["8:00"],
        ),
        (
            "time = { start = \"08:00\" }\nagent = \"a\"",
            7,
            &["both `start` and `end`"],
        ),
        (
            "time = { start = \"08:00\", end = \"08:00\" }\nagent = \"a\"",
            7,
            &["both 08:00"],
        ),
        (
            "time = { days = [\"funday\"] }\nagent = \"a\"",
            7,
            &["unknown day \"funday\""],
        ),
        (
            "time = { days = [] }\nagent = \"a\"",
            7,
            &["`days` is empty"],
        ),
        // Unknown keys come from toml, still placed on the rule and the line.
        (
            "agent = \"a\"\npriority = 5",
            8,
            &["rules[1] \"bad\"", "unknown field `priority`"],
        ),
        (
            "agent = \"a\"\nto = { exact = \"+14155550100\", regex = \"x\" }",
            8,
            &["rules[1] \"bad\"", "unknown field `regex`"],
        ),
        (
            "agent = \"a\"\ntime = { days = [\"mon\"], tz = \"UTC\" }",
            8,
            &["unknown field `tz`"],
        ),
        ("reject = \"busy\"", 7, &["rules[1] \"bad\""]),
    ];
    for (body, line, needles) in cases {
        load_err(&format!("{head}{body}\n"), *line, needles);
    }
}

#[test]
fn duplicate_names_and_plan_level_errors() {
    let e = load_err(
        "[[rules]]\nname = \"x\"\nagent = \"a\"\n\n[[rules]]\nname = \"x\"\nagent = \"b\"\n",
        6,
        &["rules[1] \"x\"", "already used by rules[0]"],
    );
    assert!(matches!(
        e,
        PlanError::Rule {
            problem: RuleProblem::DuplicateName { first_index: 0 },
            ..
        }
    ));
    load_err(
        "[[rules]]\nname = \" \"\nagent = \"a\"\n",
        2,
        &["rules[0]", "name is empty"],
    );
    load_err(
        "[[rules]]\nagent = \"a\"\n",
        1,
        &["rules[0]", "missing field `name`"],
    );
    load_err(
        "default_country_code = \"01\"\n",
        1,
        &["default_country_code \"01\""],
    );
    load_err("\nfallback = 1\n", 2, &["unknown field `fallback`"]);
    load_err(
        "[[numbers]]\nnumber = \"555-0100\"\n",
        2,
        &["numbers[0]", "555-0100"],
    );
    load_err(
        "[[numbers]]\nnumber = \"+14155550100\"\n[[numbers]]\nnumber = \"+14155550100\"\n",
        3,
        &["numbers[1]", "listed twice"],
    );
    load_err(
        "[[numbers]]\nnumber = \"+14155550100\"\nwebhook_url = \"ftp://x\"\n",
        3,
        &["webhook_url \"ftp://x\""],
    );
    load_err(
        "[[numbers]]\nnumber = \"+14155550100\"\nowner = \"x\"\n",
        3,
        &["unknown field `owner`"],
    );
    load_err("rules = [\n", 2, &[]);
}

#[test]
fn pattern_matching_table() {
    let cases: &[(&str, &str, bool)] = &[
        ("+1NXXNXXXXXX", "+12025550100", true),
        ("+1NXXNXXXXXX", "+12021550100", false),
        ("+1nxxnxxxxxx", "+12025550100", true),
        ("+Z.", "+1", false),
        ("+Z.", "+12", true),
        ("+Z.", "+", false),
        ("+Z.", "+0", false),
        ("+1.", "+1", false),
        ("+1.", "+12", true),
        ("+1.0", "+1230", true),
        ("+1.0", "+10", false),
        ("+1..", "+123", true),
        ("+1..", "+12", false),
        ("+[1-35]X", "+50", true),
        ("+[1-35]X", "+40", false),
        ("+[0]", "+0", true),
        ("+X", "++", false),
        ("+X", "+a", false),
        ("+.", "+12a", false),
    ];
    for (pat, num, want) in cases {
        let p = Pattern::parse(pat).unwrap();
        assert_eq!(p.matches(num), *want, "{pat} vs {num}");
    }
    for bad in ["", "+", "+[]", "+[a]", "+[1-]", "+1+", "+X#", "+[9-1]"] {
        if *bad == *"+" {
            // A lone '+' is a valid pattern that matches only "+".
            assert!(Pattern::parse(bad).unwrap().matches("+"));
            continue;
        }
        assert!(Pattern::parse(bad).is_err(), "{bad:?} should not parse");
    }
    assert!(Pattern::parse(&format!("+{}", "X".repeat(80))).is_err());
}

fn arb_weekday() -> impl Strategy<Value = Weekday> {
    prop::sample::select(Weekday::ALL.to_vec())
}

proptest! {
    #[test]
    fn pattern_matcher_never_panics(pat in "\\PC{0,40}", num in "\\PC{0,40}") {
        if let Ok(p) = Pattern::parse(&pat) {
            let _ = p.matches(&num);
        }
    }

    #[test]
    fn pattern_of_structured_tokens_never_panics(
        pat in "\\+[0-9XNZxnz.\\[\\]\\-]{0,30}", num in "\\+?[0-9]{0,20}"
    ) {
        if let Ok(p) = Pattern::parse(&pat) {
            let _ = p.matches(&num);
        }
    }

    #[test]
    fn literal_pattern_matches_exactly_its_number(
        digits in "[0-9]{1,15}", other in "[0-9]{0,16}"
    ) {
        let literal = format!("+{digits}");
        let p = Pattern::parse(&literal).unwrap();
        prop_assert!(p.matches(&literal));
        let candidate = format!("+{other}");
        prop_assert_eq!(p.matches(&candidate), candidate == literal);
    }

    #[test]
    fn route_never_panics(
        from in "\\PC{0,24}", to in "\\PC{0,24}",
        trunk in proptest::option::of("[a-z-]{0,12}"),
        weekday in arb_weekday(), minutes in any::<u16>(),
    ) {
        for text in [BASIC, CARRIER] {
            let p = plan(text);
            let d = p.route(&Attempt {
                from: from.clone(),
                to: to.clone(),
                source_trunk: trunk.clone(),
                local_time: LocalTime { weekday, minutes },
            });
            prop_assert!(!d.explanation.is_empty());
            if d.rule.is_none() {
                let is_404 = matches!(d.route, Route::Reject { sip_code: 404, .. });
                prop_assert!(is_404);
            }
        }
    }

    #[test]
    fn prefix_rule_matches_every_number_with_that_prefix(
        prefix in "[1-9][0-9]{0,6}", rest in "[0-9]{7,8}"
    ) {
        let p = one_rule(&format!("to = {{ prefix = \"+{prefix}\" }}"));
        let number = format!("+{prefix}{rest}");
        prop_assume!(number.len() <= 16);
        let a = attempt("+14155550100", &number, None, at(Weekday::Mon, 0, 0));
        prop_assert!(hits(&p, &a), "{:?}", p.route(&a).explanation);
    }
}

#[test]
fn a_stream_rule_routes_to_an_agent_server() {
    let p = plan(
        "default_country_code = \"1\"\n[[rules]]\nname = \"bot\"\nto = { exact = \"+14155550150\" }\n\
         stream = { url = \"wss://agent.example.com/media\", encoding = \"audio/x-l16\", \
         sample_rate = 16000, parameters = { lang = \"en\" } }\n",
    );
    let d = p.route(&attempt(
        "+12025551234",
        "+14155550150",
        None,
        at(Weekday::Mon, 12, 0),
    ));
    let Route::Stream(st) = d.route else {
        panic!("{:?}", d.route);
    };
    assert_eq!(st.url, "wss://agent.example.com/media");
    assert_eq!(st.encoding.as_deref(), Some("audio/x-l16"));
    assert_eq!(st.sample_rate, Some(16000));
    assert!(st.bidirectional);
    assert_eq!(st.parameters.get("lang").map(String::as_str), Some("en"));
    // Not a WebSocket URL: refused with its line.
    load_err(
        "[[rules]]\nname = \"bad\"\nstream = { url = \"http://x\" }\n",
        3,
        &["rules[0] \"bad\"", "ws://"],
    );
    // One action only.
    load_err(
        "[[rules]]\nname = \"bad\"\nagent = \"a\"\nstream = { url = \"ws://x\" }\n",
        4,
        &["agent, stream"],
    );
}
