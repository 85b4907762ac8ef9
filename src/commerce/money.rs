//! Money as integers in minor units. Shopify sends amounts as decimal strings ("123.45");
//! they are converted exactly, never through a float, using the currency's exponent.

/// Minor-unit digits of a currency (ISO 4217); 2 unless listed.
pub fn exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "VND" | "VUV"
        | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// `"123.45"` in `USD` → 12345. Extra decimals are accepted only when they are zeros.
pub fn to_minor(amount: &str, currency: &str) -> Result<i64, String> {
    let exp = exponent(currency) as usize;
    let (neg, digits) = match amount.trim().strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, amount.trim()),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let ok = !whole.is_empty() && whole.bytes().all(|b| b.is_ascii_digit()) && frac.bytes().all(|b| b.is_ascii_digit());
    if !ok || whole.len() > 15 {
        return Err(format!("amount `{amount}` is not a decimal number"));
    }
    if frac.len() > exp && frac[exp..].bytes().any(|b| b != b'0') {
        return Err(format!("amount `{amount}` has more than {exp} decimals for {currency}"));
    }
    let mut minor: i64 = whole.parse().map_err(|_| format!("amount `{amount}` is too large"))?;
    for i in 0..exp {
        let d = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        minor = minor * 10 + d;
    }
    Ok(if neg { -minor } else { minor })
}

/// `basis × rate_bp / 10 000`, rounded half away from zero to the minor unit.
pub fn percent_of(basis_minor: i64, rate_bp: u32) -> i64 {
    let x = i128::from(basis_minor) * i128::from(rate_bp);
    let q = (x.abs() + 5_000) / 10_000;
    (if x < 0 { -q } else { q }) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_conversion_and_rounding() {
        assert_eq!(to_minor("123.45", "USD"), Ok(12345));
        assert_eq!(to_minor("0.1", "EUR"), Ok(10));
        assert_eq!(to_minor("7", "USD"), Ok(700));
        assert_eq!(to_minor("1500", "JPY"), Ok(1500));
        assert_eq!(to_minor("1.234", "KWD"), Ok(1234));
        assert_eq!(to_minor("19.990", "USD"), Ok(1999));
        assert!(to_minor("19.999", "USD").is_err());
        assert!(to_minor("1e3", "USD").is_err());
        assert_eq!(to_minor("-5.00", "USD"), Ok(-500));
        // 10 % of 19.95 = 1.995 → 2.00; 12.5 % of 0.04 = 0.005 → 0.01; clawbacks mirror.
        assert_eq!(percent_of(1995, 1000), 200);
        assert_eq!(percent_of(4, 1250), 1);
        assert_eq!(percent_of(-1995, 1000), -200);
        assert_eq!(percent_of(3, 1000), 0);
    }
}
