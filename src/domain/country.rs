//! ISO 3166-1 alpha-2 country codes.

/// Every officially assigned ISO 3166-1 alpha-2 code (249), space separated.
const ASSIGNED: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR \
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP \
KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT \
MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW \
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG \
UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// `ASSIGNED` as a table of every two-letter code, `AA` to `ZZ`: checked
/// once per address, twice per order, so a lookup, not a scan of the list.
const TABLE: [bool; 26 * 26] = {
    let list = ASSIGNED.as_bytes();
    let mut table = [false; 26 * 26];
    let mut i = 0;
    while i + 1 < list.len() {
        table[slot(list[i], list[i + 1])] = true;
        i += 3;
    }
    table
};

const fn slot(first: u8, second: u8) -> usize {
    (first - b'A') as usize * 26 + (second - b'A') as usize
}

/// True for an assigned code in its canonical upper-case form.
pub fn is_assigned(code: &str) -> bool {
    match code.as_bytes() {
        &[a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => TABLE[slot(a, b)],
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_has_every_assigned_code_once() {
        let codes: Vec<&str> = ASSIGNED.split(' ').collect();
        assert_eq!(codes.len(), 249);
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 249);
    }

    #[test]
    fn accepts_real_codes_only() {
        for ok in ["DE", "US", "GB", "NL", "ZW"] {
            assert!(is_assigned(ok), "{ok}");
        }
        for bad in ["de", "UK", "XX", "USA", "", "D", "ÄÖ", "[A", "@Z", "A["] {
            assert!(!is_assigned(bad), "{bad}");
        }
    }

    /// The table says of every two-letter code what the list says.
    #[test]
    fn the_table_agrees_with_the_list() {
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                let code = String::from_utf8(vec![a, b]).unwrap();
                let listed = ASSIGNED.split(' ').any(|c| c == code);
                assert_eq!(is_assigned(&code), listed, "{code}");
            }
        }
    }
}
