//! Mann-Whitney U test (two-sided, asymptotic, continuity + tie corrected), pure; as SciPy's
//! `mannwhitneyu(x, y, alternative='two-sided', method='asymptotic', use_continuity=True)`.

/// Largest sample accepted per side: bounds the O((n+m) log(n+m)) rank cost.
pub const MAX_SAMPLES: usize = 1_000;

/// Why a test could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MwError {
    /// One side has no sample.
    #[error("empty sample")]
    Empty,
    /// A sample is NaN or infinite.
    #[error("non-finite sample")]
    NonFinite,
    /// A side has more than `MAX_SAMPLES` samples.
    #[error("more than {MAX_SAMPLES} samples on one side")]
    TooMany,
}

/// Outcome of the test: U of the first sample, the normal deviate and the two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MwResult {
    /// U statistic of `x` (pairs where x > y, ties count one half).
    pub u: f64,
    /// Continuity-corrected normal deviate of `u` (sign: x larger is positive).
    pub z: f64,
    /// Two-sided p-value.
    pub p: f64,
}

/// Runs the two-sided asymptotic Mann-Whitney U test on `x` against `y`.
pub fn mann_whitney(x: &[f64], y: &[f64]) -> Result<MwResult, MwError> {
    let (n1, n2) = (x.len(), y.len());
    if n1 == 0 || n2 == 0 {
        return Err(MwError::Empty);
    }
    if n1 > MAX_SAMPLES || n2 > MAX_SAMPLES {
        return Err(MwError::TooMany);
    }
    if x.iter().chain(y).any(|v| !v.is_finite()) {
        return Err(MwError::NonFinite);
    }
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut r1, mut tie_term, mut i) = (0.0, 0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        r1 += rank * all[i..=j].iter().filter(|e| e.1).count() as f64;
        i = j + 1;
    }
    let (a, b) = (n1 as f64, n2 as f64);
    let n = a + b;
    let u = r1 - a * (a + 1.0) / 2.0;
    let mu = a * b / 2.0;
    let var = a * b / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if var <= 0.0 {
        return Ok(MwResult { u, z: 0.0, p: 1.0 });
    }
    let d = u - mu;
    let z = (d - 0.5 * d.signum()) / var.sqrt();
    let p = (erfc(z.abs() / std::f64::consts::SQRT_2)).min(1.0);
    Ok(MwResult { u, z, p })
}

/// Complementary error function (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

#[cfg(test)]
#[path = "mannwhitney_tests.rs"]
mod tests;
