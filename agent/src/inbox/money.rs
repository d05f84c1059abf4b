//! Decimal money text from POS files ("12.50") to integer minor units, exactly, by the currency's exponent.
//!
//! No floating point anywhere: the text is read digit by digit into an `i64` with checked arithmetic. A value
//! with more fraction digits than the currency has is refused unless the extra digits are zeros (`"12.500"` is
//! exactly 1250 cents; `"12.505"` cannot be represented and is refused rather than rounded).

use storesync_shared::event::check_currency;

/// Why a money text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MoneyError {
    pub(crate) code: &'static str,
    pub(crate) detail: String,
}

impl MoneyError {
    fn new(code: &'static str, detail: impl Into<String>) -> MoneyError {
        MoneyError { code, detail: detail.into() }
    }
}

/// The number of minor-unit digits of an ISO 4217 currency (EUR 2, JPY 0, BHD 3).
pub(crate) fn exponent(currency: &str) -> Result<u32, MoneyError> {
    check_currency(currency).map_err(|e| MoneyError::new(e.code, e.detail))?;
    iso_currency::Currency::from_code(currency)
        .and_then(|c| c.exponent())
        .map(u32::from)
        .ok_or_else(|| MoneyError::new("unknown_currency", format!("currency {currency} has no minor unit")))
}

/// Parses a decimal amount (`"12.50"`, `"-3"`, `"+0.5"`, `"7."`) into minor units of `currency`.
///
/// Accepted: an optional sign, digits, and an optional `.` with fraction digits. Refused: exponents, thousands
/// separators, commas, spaces inside, empty text, more significant fraction digits than the currency allows, and
/// values beyond 64 bits.
pub(crate) fn to_minor(text: &str, currency: &str, field: &str) -> Result<i64, MoneyError> {
    let exp = exponent(currency)?;
    parse_minor(text, exp).map_err(|why| {
        let code = if why == Why::Overflow { "amount_overflow" } else { "invalid_amount" };
        MoneyError::new(code, format!("{field} {text:?} {}", why.text(currency, exp)))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    NotDecimal,
    TooPrecise,
    Overflow,
}

impl Why {
    fn text(self, currency: &str, exp: u32) -> String {
        match self {
            Why::NotDecimal => "is not a decimal amount like 12.50".into(),
            Why::TooPrecise => format!("has more than {exp} decimal places, which {currency} does not have"),
            Why::Overflow => "overflows a 64-bit amount of minor units".into(),
        }
    }
}

fn parse_minor(text: &str, exp: u32) -> Result<i64, Why> {
    let t = text.trim();
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return Err(Why::NotDecimal);
    }
    let exp = exp as usize;
    if frac.len() > exp && frac.as_bytes()[exp..].iter().any(|&b| b != b'0') {
        return Err(Why::TooPrecise);
    }
    let mut value: i64 = 0;
    let push = |v: i64, d: u8| v.checked_mul(10).and_then(|v| v.checked_add(i64::from(d - b'0'))).ok_or(Why::Overflow);
    for d in int.bytes() {
        value = push(value, d)?;
    }
    for i in 0..exp {
        value = push(value, frac.as_bytes().get(i).copied().unwrap_or(b'0'))?;
    }
    Ok(if negative { -value } else { value })
}

/// Parses a whole-number quantity written as a decimal (`"2"`, `"2.000"`): POS exports often write quantities
/// with decimals. A fractional quantity (a weighed item) is refused: canonical lines count units.
pub(crate) fn whole_quantity(text: &str, field: &str) -> Result<i64, MoneyError> {
    parse_minor(text, 0).map_err(|why| match why {
        Why::TooPrecise => MoneyError::new(
            "invalid_qty",
            format!("{field} {text:?} is not a whole number of units (weighed items are not supported)"),
        ),
        _ => MoneyError::new("invalid_qty", format!("{field} {text:?} is not a number of units")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, currency: &str, want: Result<i64, &str>) {
        let got = to_minor(text, currency, "amount").map_err(|e| e.code);
        assert_eq!(got, want, "{text:?} {currency}");
    }

    #[test]
    fn decimal_text_becomes_exact_minor_units() {
        check("12.50", "EUR", Ok(1250));
        check("12.5", "EUR", Ok(1250));
        check("12", "EUR", Ok(1200));
        check("12.", "EUR", Ok(1200));
        check(".5", "EUR", Ok(50));
        check("0.01", "EUR", Ok(1));
        check("-3.99", "EUR", Ok(-399));
        check("+3.99", "EUR", Ok(399));
        check(" 7.10 ", "EUR", Ok(710));
        check("12.500", "EUR", Ok(1250));
        check("1500", "JPY", Ok(1500));
        check("1500.0", "JPY", Ok(1500));
        check("1.234", "BHD", Ok(1234));
        check("92233720368547758.07", "EUR", Ok(i64::MAX));
    }

    #[test]
    fn inexact_or_odd_text_is_refused() {
        check("12.505", "EUR", Err("invalid_amount"));
        check("1500.5", "JPY", Err("invalid_amount"));
        check("1.2345", "BHD", Err("invalid_amount"));
        check("1,50", "EUR", Err("invalid_amount"));
        check("1 000.00", "EUR", Err("invalid_amount"));
        check("1e3", "EUR", Err("invalid_amount"));
        check("", "EUR", Err("invalid_amount"));
        check(".", "EUR", Err("invalid_amount"));
        check("-", "EUR", Err("invalid_amount"));
        check("--1", "EUR", Err("invalid_amount"));
        check("NaN", "EUR", Err("invalid_amount"));
        check("92233720368547758.08", "EUR", Err("amount_overflow"));
        check("1.00", "XYZ", Err("unknown_currency"));
        check("1.00", "eur", Err("unknown_currency"));
        check("1", "XAU", Err("unknown_currency"));
    }

    #[test]
    fn the_detail_names_field_value_and_currency() {
        let e = to_minor("12.505", "EUR", "lines[0].price").unwrap_err();
        assert!(e.detail.contains("lines[0].price") && e.detail.contains("12.505") && e.detail.contains("EUR"));
    }

    #[test]
    fn quantities_must_be_whole() {
        assert_eq!(whole_quantity("2", "qty"), Ok(2));
        assert_eq!(whole_quantity("2.000", "qty"), Ok(2));
        assert_eq!(whole_quantity("-1", "qty"), Ok(-1));
        assert_eq!(whole_quantity("0.5", "qty").unwrap_err().code, "invalid_qty");
        assert_eq!(whole_quantity("two", "qty").unwrap_err().code, "invalid_qty");
    }
}
