//! Exact amounts: JSON number text ⇄ base units in `U256`.
//!
//! Requests carry amounts as JSON numbers in token units (`100.5` USDT). They are
//! read from the number's text, never through a float, and scaled by the token's
//! decimals; a value with more decimals than the token has is refused rather than
//! rounded. Responses write the exact decimal back.

use alloy::primitives::U256;

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// The text is not a JSON number.
    #[error("`{0}` is not a number")]
    NotANumber(String),
    /// Zero or negative.
    #[error("must be greater than zero")]
    NotPositive,
    /// More decimal places than the token has.
    #[error("has more than {decimals} decimal places")]
    TooPrecise {
        /// The token's decimals.
        decimals: u8,
    },
    /// Does not fit in 256 bits of base units.
    #[error("is too large")]
    TooLarge,
}

/// Most decimal digits a `U256` can hold.
const U256_DIGITS: usize = 78;

/// Parses JSON number text (`100.5`, `1e2`, `0.000001`) into base units with
/// `decimals` places. Only values greater than zero are accepted.
pub fn parse_units(text: &str, decimals: u8) -> Result<U256, AmountError> {
    let not_a_number = || AmountError::NotANumber(text.chars().take(64).collect());
    let s = text.trim();
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    // Split mantissa and exponent.
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty()
        || !all_digits(int_part)
        || (int_part.len() > 1 && int_part.starts_with('0'))
        || (mantissa.contains('.') && frac_part.is_empty())
        || !all_digits(frac_part)
    {
        return Err(not_a_number());
    }
    let exp: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !all_digits(digits) {
                return Err(not_a_number());
            }
            // Anything past 6 digits of exponent is out of every range we serve;
            // clamp so the arithmetic below cannot overflow.
            let magnitude: i64 = if digits.len() > 6 {
                1_000_000
            } else {
                digits.parse().map_err(|_| not_a_number())?
            };
            if e.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };

    let mut digits: String = int_part.chars().chain(frac_part.chars()).collect();
    let nonzero = digits.trim_start_matches('0');
    if nonzero.is_empty() {
        return Err(AmountError::NotPositive);
    }
    if negative {
        return Err(AmountError::NotPositive);
    }
    digits = nonzero.to_owned();

    // value = digits × 10^scale base units
    let scale = exp - frac_part.len() as i64 + i64::from(decimals);
    if scale < 0 {
        let drop = usize::try_from(-scale).map_err(|_| AmountError::TooPrecise { decimals })?;
        let trailing_zeros = digits.len() - digits.trim_end_matches('0').len();
        if trailing_zeros < drop {
            return Err(AmountError::TooPrecise { decimals });
        }
        digits.truncate(digits.len() - drop);
    } else {
        let add = usize::try_from(scale).map_err(|_| AmountError::TooLarge)?;
        if digits.len() + add > U256_DIGITS {
            return Err(AmountError::TooLarge);
        }
        digits.extend(std::iter::repeat_n('0', add));
    }
    U256::from_str_radix(&digits, 10).map_err(|_| AmountError::TooLarge)
}

/// Writes base units as an exact decimal in token units, without trailing
/// zeros: `100500000` with 6 decimals is `100.5`, zero is `0`.
pub fn format_units(value: U256, decimals: u8) -> String {
    let digits = value.to_string();
    let decimals = usize::from(decimals);
    if decimals == 0 {
        return digits;
    }
    let padded = if digits.len() <= decimals {
        format!("{}{digits}", "0".repeat(decimals + 1 - digits.len()))
    } else {
        digits
    };
    let (int, frac) = padded.split_at(padded.len() - decimals);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(text: &str, d: u8) -> Result<U256, AmountError> {
        parse_units(text, d)
    }

    #[test]
    fn reads_exact_decimals() {
        assert_eq!(units("100.5", 6), Ok(U256::from(100_500_000u64)));
        assert_eq!(units("0.000001", 6), Ok(U256::from(1u64)));
        assert_eq!(units("50.25", 6), Ok(U256::from(50_250_000u64)));
        assert_eq!(units("200.0", 6), Ok(U256::from(200_000_000u64)));
        assert_eq!(
            units("0.25", 18),
            Ok(U256::from(250_000_000_000_000_000u64))
        );
        assert_eq!(units("7", 0), Ok(U256::from(7u64)));
    }

    #[test]
    fn reads_exponents() {
        assert_eq!(units("1e2", 6), Ok(U256::from(100_000_000u64)));
        assert_eq!(units("1E+2", 6), Ok(U256::from(100_000_000u64)));
        assert_eq!(units("15e-1", 6), Ok(U256::from(1_500_000u64)));
        assert_eq!(units("1e-6", 6), Ok(U256::from(1u64)));
        assert_eq!(
            units("1e-7", 6),
            Err(AmountError::TooPrecise { decimals: 6 })
        );
        assert_eq!(units("1000e-9", 6), Ok(U256::from(1u64)));
    }

    #[test]
    fn refuses_zero_and_negative() {
        assert_eq!(units("0", 6), Err(AmountError::NotPositive));
        assert_eq!(units("0.000", 6), Err(AmountError::NotPositive));
        assert_eq!(units("-1", 6), Err(AmountError::NotPositive));
        assert_eq!(units("-0", 6), Err(AmountError::NotPositive));
        assert_eq!(units("-0.5", 6), Err(AmountError::NotPositive));
        assert_eq!(units("0e5", 6), Err(AmountError::NotPositive));
    }

    #[test]
    fn refuses_more_decimals_than_the_token_has() {
        assert_eq!(
            units("1.0000001", 6),
            Err(AmountError::TooPrecise { decimals: 6 })
        );
        assert_eq!(
            units("0.0000001", 6),
            Err(AmountError::TooPrecise { decimals: 6 })
        );
        // Trailing zeros past the token's precision are exact, hence fine.
        assert_eq!(units("1.0000000", 6), Ok(U256::from(1_000_000u64)));
    }

    #[test]
    fn numbers_too_large_for_any_float_are_exact_or_refused() {
        // 30 integer digits: beyond f64's 15-17 significant digits, exact here.
        let big = "123456789012345678901234567890.123456";
        let want = U256::from_str_radix("123456789012345678901234567890123456", 10).unwrap();
        assert_eq!(units(big, 6), Ok(want));
        assert_eq!(format_units(want, 6), big);
        // Beyond f64's range altogether.
        assert_eq!(units("1e400", 6), Err(AmountError::TooLarge));
        assert_eq!(units("1e99999999999", 6), Err(AmountError::TooLarge));
        // Beyond U256 by one digit.
        let huge = "1".repeat(80);
        assert_eq!(units(&huge, 0), Err(AmountError::TooLarge));
        // A tiny exponent is over-precise, not a crash.
        assert_eq!(
            units("1e-99999999999", 6),
            Err(AmountError::TooPrecise { decimals: 6 })
        );
    }

    #[test]
    fn refuses_what_is_not_a_json_number() {
        for bad in [
            "", "abc", "1.", ".5", "01", "1e", "1e+", "0x10", "1,5", "1.2.3", "NaN", "+1", "--1",
            " ",
        ] {
            assert!(
                matches!(units(bad, 6), Err(AmountError::NotANumber(_))),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn writes_exact_decimals() {
        assert_eq!(format_units(U256::from(100_500_000u64), 6), "100.5");
        assert_eq!(format_units(U256::from(1u64), 6), "0.000001");
        assert_eq!(format_units(U256::ZERO, 6), "0");
        assert_eq!(format_units(U256::from(200_000_000u64), 6), "200");
        assert_eq!(
            format_units(U256::from(250_000_000_000_000_000u64), 18),
            "0.25"
        );
        assert_eq!(format_units(U256::from(42u64), 0), "42");
        assert_eq!(format_units(U256::MAX, 18).len(), 79);
    }

    #[test]
    fn round_trips() {
        for s in ["1", "0.1", "123.456789", "0.000001", "99999999999.999999"] {
            let v = units(s, 6).unwrap();
            assert_eq!(format_units(v, 6), s);
        }
    }
}
