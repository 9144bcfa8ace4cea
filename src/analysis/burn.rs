//! SLO burn rate (pure): the SRE workbook's multi-window, multi-burn-rate rules on error ratios.

/// Why a burn rate could not be judged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BurnError {
    /// The objective is not inside (0, 100).
    #[error("objective must be inside (0, 100)")]
    Objective,
    /// An error ratio is NaN, infinite or outside [0, 1].
    #[error("error ratio must be a number in [0, 1]")]
    Ratio,
}

/// Burn rate of an error ratio against an objective in percent (1.0 spends the budget exactly).
pub fn burn_rate(objective: f64, error_ratio: f64) -> Result<f64, BurnError> {
    if !(objective > 0.0 && objective < 100.0) {
        return Err(BurnError::Objective);
    }
    if !(0.0..=1.0).contains(&error_ratio) {
        return Err(BurnError::Ratio);
    }
    Ok(error_ratio / (1.0 - objective / 100.0))
}

/// Share of the whole budget a burn rate spends over `window_s` of an SLO window of `slo_window_s`.
pub fn budget_spent(burn: f64, window_s: f64, slo_window_s: f64) -> f64 {
    burn * window_s / slo_window_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workbook_numbers() {
        // Google SRE workbook, "Alerting on SLOs", 14.4x over 1h spends 2 % of a 30-day budget,
        // 6x over 6h spends 5 %.
        let month = 30.0 * 24.0 * 3600.0;
        assert!((budget_spent(14.4, 3600.0, month) - 0.02).abs() < 1e-12);
        assert!((budget_spent(6.0, 6.0 * 3600.0, month) - 0.05).abs() < 1e-12);
        assert!((burn_rate(99.9, 0.0144).unwrap() - 14.4).abs() < 1e-9);
    }

    #[test]
    fn malformed_input_is_typed() {
        assert_eq!(burn_rate(100.0, 0.1), Err(BurnError::Objective));
        assert_eq!(burn_rate(f64::NAN, 0.1), Err(BurnError::Objective));
        assert_eq!(burn_rate(99.9, f64::NAN), Err(BurnError::Ratio));
    }
}
