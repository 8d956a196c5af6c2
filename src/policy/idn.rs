//! Internationalized labels: an `xn--` label is only accepted when it is the
//! A-label of a valid IDNA2008 U-label (RFC 5890 §2.3.2.1, RFC 5891 §5.4),
//! as the Baseline Requirements' P-Label rule and Boulder's policy ask, and
//! when that U-label does not mix scripts (UTS #39's "highly restrictive"
//! level), so a name cannot pass for another.
//!
//! The checks, in order, each with its own message:
//! 1. the part after `xn--` is Punycode (RFC 3492) and its canonical form;
//! 2. it decodes to something that is not plain ASCII;
//! 3. the U-label is in Unicode Normalization Form C;
//! 4. UTS #46 non-transitional processing (STD3 rules, hyphen, Bidi and
//!    joiner checks) leaves it unchanged: no mapped or disallowed code point;
//! 5. every code point is PVALID under RFC 5892's derivation (letters,
//!    combining marks, decimal digits and its exceptions) or a CONTEXTO
//!    code point whose rule holds; so symbols and emoji, which UTS #46
//!    tolerates (NV8), are refused;
//! 6. one script per label, Common and Inherited aside, or Japanese
//!    (Han, Hiragana, Katakana), Chinese (Han, Bopomofo) or Korean (Han,
//!    Hangul), each optionally with Latin.

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use unicode_script::{Script, UnicodeScript};

/// Check one label that starts with `xn--` (already lower-case ASCII).
/// The error says what is wrong, for a `rejectedIdentifier` detail.
pub fn check_a_label(label: &str) -> Result<(), String> {
    let encoded = label.get(4..).unwrap_or_default();
    let ulabel = idna::punycode::decode_to_string(encoded)
        .ok_or_else(|| format!("label {label:?} is not valid Punycode"))?;
    if ulabel.is_ascii() {
        return Err(format!(
            "label {label:?} decodes to ASCII only ({:?}), which is never written as an A-label",
            ulabel
        ));
    }
    if idna::punycode::encode_str(&ulabel).as_deref() != Some(encoded) {
        return Err(format!(
            "label {label:?} is not the canonical Punycode of {ulabel:?}"
        ));
    }
    if !unicode_normalization::is_nfc(&ulabel) {
        return Err(format!(
            "label {label:?} decodes to {ulabel:?}, which is not in Unicode Normalization Form C"
        ));
    }
    let uts46 = Uts46::new().to_ascii(
        label.as_bytes(),
        AsciiDenyList::STD3,
        Hyphens::Check,
        DnsLength::Verify,
    );
    if uts46.ok().as_deref() != Some(label) {
        return Err(format!(
            "label {label:?} decodes to {ulabel:?}, which is not a valid IDNA2008 label"
        ));
    }
    let chars: Vec<char> = ulabel.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !pvalid(c) && !contexto_holds(&chars, i) {
            return Err(format!(
                "label {label:?} decodes to {ulabel:?}, whose U+{:04X} IDNA2008 does not allow",
                c as u32
            ));
        }
    }
    if let Some(scripts) = mixed_scripts(&chars) {
        return Err(format!(
            "label {label:?} decodes to {ulabel:?}, which mixes scripts ({scripts})"
        ));
    }
    Ok(())
}

/// RFC 5892's LetterDigits category (§2.1) and the PVALID exceptions
/// (§2.6), for code points UTS #46 already let through (so no upper-case,
/// unassigned or otherwise mapped ones reach here), plus the hyphen.
fn pvalid(c: char) -> bool {
    use GeneralCategory::*;
    if c == '-' || c.is_ascii_lowercase() || c.is_ascii_digit() {
        return true;
    }
    // Exceptions, PVALID: ß, ς, Arabic end-of-ayah marks, Tibetan tsheg,
    // ideographic number zero; joiners are CONTEXTJ (UTS #46 CheckJoiners).
    if matches!(
        c,
        '\u{00DF}' | '\u{03C2}' | '\u{06FD}' | '\u{06FE}' | '\u{0F0B}' | '\u{3007}'
    ) || matches!(c, '\u{200C}' | '\u{200D}')
    {
        return true;
    }
    // Exceptions, DISALLOWED although letters: Arabic tatweel and the
    // modifier letters RFC 5892 §2.6 lists.
    if matches!(
        c,
        '\u{0640}' | '\u{07FA}' | '\u{302E}' | '\u{302F}' | '\u{3031}'..='\u{3035}' | '\u{303B}'
    ) {
        return false;
    }
    matches!(
        c.general_category(),
        LowercaseLetter
            | OtherLetter
            | ModifierLetter
            | NonspacingMark
            | SpacingMark
            | DecimalNumber
    ) && !is_contexto(c)
}

fn is_contexto(c: char) -> bool {
    matches!(
        c,
        '\u{00B7}' | '\u{0375}' | '\u{05F3}' | '\u{05F4}' | '\u{30FB}' | '\u{0660}'..='\u{0669}'
            | '\u{06F0}'..='\u{06F9}'
    )
}

/// RFC 5892 Appendix A's CONTEXTO rules for the code point at `i`.
fn contexto_holds(chars: &[char], i: usize) -> bool {
    let c = chars[i];
    let before = i.checked_sub(1).and_then(|j| chars.get(j)).copied();
    let after = chars.get(i + 1).copied();
    match c {
        // MIDDLE DOT: between two 'l' (Catalan l·l).
        '\u{00B7}' => before == Some('l') && after == Some('l'),
        // GREEK LOWER NUMERAL SIGN: followed by Greek.
        '\u{0375}' => after.is_some_and(|a| a.script() == Script::Greek),
        // HEBREW GERESH and GERSHAYIM: preceded by Hebrew.
        '\u{05F3}' | '\u{05F4}' => before.is_some_and(|b| b.script() == Script::Hebrew),
        // KATAKANA MIDDLE DOT: the label has Hiragana, Katakana or Han.
        '\u{30FB}' => chars.iter().any(|&x| {
            x != '\u{30FB}'
                && matches!(
                    x.script(),
                    Script::Hiragana | Script::Katakana | Script::Han
                )
        }),
        // ARABIC-INDIC DIGITS and EXTENDED ARABIC-INDIC DIGITS: not both.
        '\u{0660}'..='\u{0669}' => !chars.iter().any(|x| ('\u{06F0}'..='\u{06F9}').contains(x)),
        '\u{06F0}'..='\u{06F9}' => !chars.iter().any(|x| ('\u{0660}'..='\u{0669}').contains(x)),
        _ => false,
    }
}

/// The scripts of a label that mixes them beyond what UTS #39's "highly
/// restrictive" level allows, or `None`.
fn mixed_scripts(chars: &[char]) -> Option<String> {
    let mut scripts: Vec<Script> = chars
        .iter()
        .map(|c| c.script())
        .filter(|s| !matches!(s, Script::Common | Script::Inherited | Script::Unknown))
        .collect();
    scripts.sort_by_key(|s| s.full_name());
    scripts.dedup();
    let allowed = |extra: &[Script]| {
        scripts
            .iter()
            .all(|s| *s == Script::Latin || *s == Script::Han || extra.contains(s))
    };
    let ok = scripts.len() <= 1
        || allowed(&[Script::Hiragana, Script::Katakana])
        || allowed(&[Script::Bopomofo])
        || allowed(&[Script::Hangul]);
    (!ok).then(|| {
        scripts
            .iter()
            .map(|s| s.full_name())
            .collect::<Vec<_>>()
            .join(", ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_label(u: &str) -> String {
        format!("xn--{}", idna::punycode::encode_str(u).unwrap())
    }

    #[test]
    fn accepts_valid_idns() {
        for u in [
            "bücher",
            "münchen",
            "español",
            "日本語",
            "ひらがなカタカナ漢字",
            "한국어",
            "пример",
            "ελληνικά",
            "中文",
            "παράδειγμα",
            "עברית",
            "مثال",
            "l·l",
            "ß",
        ] {
            let label = a_label(u);
            assert_eq!(check_a_label(&label), Ok(()), "{u} ({label})");
        }
        assert_eq!(check_a_label("xn--bcher-kva"), Ok(()));
    }

    #[test]
    fn refuses_bad_punycode_and_ascii_only() {
        for label in ["xn--zz", "xn--a", "xn--", "xn--abc-"] {
            let e = check_a_label(label).unwrap_err();
            assert!(e.contains(label), "{e}");
        }
        assert!(check_a_label("xn--abc-")
            .unwrap_err()
            .contains("ASCII only"));
    }

    #[test]
    fn refuses_what_idna2008_does_not_allow() {
        // An emoji (UTS #46 NV8), a symbol, upper case (mapped), a
        // non-NFC sequence (e + combining acute), a lone middle dot.
        for (u, why) in [
            ("💩", "does not allow"),
            ("a☃b", "does not allow"),
            ("Bücher", "not a valid IDNA2008 label"),
            ("e\u{0301}x", "Normalization Form C"),
            ("a·b", "does not allow"),
        ] {
            let label = a_label(u);
            let e = check_a_label(&label).unwrap_err();
            assert!(e.contains(why), "{u} ({label}): {e}");
        }
        let e = check_a_label("xn--ls8h").unwrap_err();
        assert!(e.contains("U+1F4A9"), "{e}");
    }

    #[test]
    fn refuses_mixed_scripts() {
        // "аpple" with a Cyrillic а; Greek with Latin.
        for u in ["аpple", "pαypal"] {
            let label = a_label(u);
            let e = check_a_label(&label).unwrap_err();
            assert!(e.contains("mixes scripts"), "{u} ({label}): {e}");
        }
        // Japanese with Latin is one writing system.
        assert_eq!(check_a_label(&a_label("abcカタカナ")), Ok(()));
    }
}
