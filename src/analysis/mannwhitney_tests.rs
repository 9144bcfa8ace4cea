use super::*;

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-300)
}

#[test]
fn scipy_docs_males_females_asymptotic() {
    // SciPy `scipy.stats.mannwhitneyu` docs example: males = [19, 22, 16, 29, 24],
    // females = [20, 11, 17, 12]; method="asymptotic" -> statistic=17.0, pvalue=0.11134688653314041.
    let r = mann_whitney(&[19.0, 22.0, 16.0, 29.0, 24.0], &[20.0, 11.0, 17.0, 12.0]).unwrap();
    assert_eq!(r.u, 17.0);
    assert!(close(r.p, 0.111_346_886_533_140_41, 1e-6), "p={}", r.p);
    assert!(r.z > 0.0);
}

#[test]
fn normal_cdf_known_values() {
    // Abramowitz & Stegun table 26.1: Phi(1.96) = 0.9750021048517795, Phi(-3) = 0.0013498980316301.
    assert!(close(normal_cdf(1.96), 0.975_002_104_851_779_5, 1e-7));
    assert!(close(normal_cdf(-3.0), 0.001_349_898_031_630_1, 1e-6));
    assert!(close(normal_cdf(0.0), 0.5, 1e-7));
}

#[test]
fn malformed_input_is_typed() {
    assert_eq!(mann_whitney(&[], &[1.0]), Err(MwError::Empty));
    assert_eq!(mann_whitney(&[f64::NAN], &[1.0]), Err(MwError::NonFinite));
    assert_eq!(mann_whitney(&vec![1.0; MAX_SAMPLES + 1], &[1.0]), Err(MwError::TooMany));
}

#[test]
fn all_tied_gives_p_one() {
    let r = mann_whitney(&[2.0, 2.0], &[2.0, 2.0, 2.0]).unwrap();
    assert_eq!(r.p, 1.0);
}
