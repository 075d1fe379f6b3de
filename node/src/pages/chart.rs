//! Charts drawn on the server as SVG: bars whose geometry is computed here in integers (no
//! float for money, not even to draw it) and laid out by the templates as `<rect>`s. Each bar
//! carries its exact amount (`data-value`), so a test reads the values off the page and holds
//! them against the journal.
//!
//! Hand-drawn rather than with a charting crate: two kinds of bar chart are all the pages
//! need, and plotters' SVG backend would bring font loading (its text layout measures system
//! fonts) into the node for axis labels a template writes as well.

use onecard_engine::Amount;

/// `part` of `whole` in `units`, rounded down, within `0..=units`; 0 when `whole` is not
/// positive.
pub fn share(part: Amount, whole: Amount, units: u32) -> u32 {
    let (p, w) = (part.cents().max(0), whole.cents());
    if w <= 0 {
        return 0;
    }
    u32::try_from((p.min(w) * i128::from(units)) / w).unwrap_or(0)
}

/// One bar of a vertical chart, in the chart's user units.
pub struct Column {
    /// What the bar is (a month, `income`, `spending`), for its tooltip and the tests.
    pub label: String,
    pub series: &'static str,
    /// The exact amount (negative spending, when refunds outweigh purchases, draws as 0).
    pub value: Amount,
    pub x: u32,
    pub y: u32,
    pub height: u32,
}

/// Months side by side, two bars each: income and spending.
pub struct MonthsChart {
    pub width: u32,
    pub height: u32,
    /// Where the bars stand (the x axis), above the month labels.
    pub base: u32,
    pub bar_width: u32,
    pub columns: Vec<Column>,
    /// Month labels: (x of the group's middle, `YYYY-MM`).
    pub labels: Vec<(u32, String)>,
    /// The largest amount, which is the full height.
    pub top: Amount,
}

const PLOT_HEIGHT: u32 = 160;
const GROUP: u32 = 70;
const BAR: u32 = 24;

impl MonthsChart {
    /// `months`: oldest first, each `(YYYY-MM, income, spending)`.
    pub fn new(months: &[(String, Amount, Amount)]) -> MonthsChart {
        let top = months
            .iter()
            .flat_map(|(_, i, s)| [*i, *s])
            .max()
            .unwrap_or(Amount::ZERO);
        let base = PLOT_HEIGHT + 10;
        let mut columns = Vec::new();
        let mut labels = Vec::new();
        for (n, (month, income, spending)) in months.iter().enumerate() {
            let left = 10 + GROUP * u32::try_from(n).unwrap_or(0);
            for (k, (series, value)) in [("income", *income), ("spending", *spending)]
                .into_iter()
                .enumerate()
            {
                let height = share(value, top, PLOT_HEIGHT);
                columns.push(Column {
                    label: month.clone(),
                    series,
                    value,
                    x: left + 8 + BAR * u32::try_from(k).unwrap_or(0),
                    y: base - height,
                    height,
                });
            }
            labels.push((left + GROUP / 2, month.clone()));
        }
        MonthsChart {
            width: 20 + GROUP * u32::try_from(months.len()).unwrap_or(0),
            height: base + 24,
            base,
            bar_width: BAR - 4,
            columns,
            labels,
            top,
        }
    }
}

/// One line of a horizontal bar list (spending by category or by merchant).
pub struct Row {
    pub label: String,
    pub value: Amount,
    /// The bar's width in 0..=200.
    pub width: u32,
}

/// Rows, the largest first, each bar against the largest.
pub fn rows(lines: impl IntoIterator<Item = (String, Amount)>) -> Vec<Row> {
    let mut lines: Vec<(String, Amount)> = lines.into_iter().collect();
    lines.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let top = lines.first().map_or(Amount::ZERO, |l| l.1);
    lines
        .into_iter()
        .map(|(label, value)| Row {
            width: share(value, top, 200),
            label,
            value,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    #[test]
    fn shares_are_integer_and_bounded() {
        assert_eq!(share(a("2500.00"), a("5000.00"), 300), 150);
        assert_eq!(share(a("5000.00"), a("5000.00"), 300), 300);
        assert_eq!(share(a("0.00"), a("5000.00"), 300), 0);
        assert_eq!(share(a("5.00").checked_neg(), a("5000.00"), 300), 0);
        assert_eq!(share(a("6000.00"), a("5000.00"), 300), 300);
        assert_eq!(share(a("1.00"), a("0.00"), 300), 0);
    }

    #[test]
    fn the_largest_bar_is_full_height_and_bars_stand_on_the_base() {
        let c = MonthsChart::new(&[
            ("2026-10".into(), a("100.00"), a("50.00")),
            ("2026-11".into(), a("0.00"), a("400.00")),
        ]);
        assert_eq!(c.top, a("400.00"));
        assert_eq!(c.columns.len(), 4);
        let spending_nov = &c.columns[3];
        assert_eq!(
            (spending_nov.series, spending_nov.height),
            ("spending", 160)
        );
        assert_eq!(c.columns[0].height, 40);
        for col in &c.columns {
            assert_eq!(col.y + col.height, c.base);
        }
    }

    #[test]
    fn rows_go_largest_first() {
        let r = rows([("books".into(), a("10.00")), ("food".into(), a("40.00"))]);
        assert_eq!(r[0].label, "food");
        assert_eq!((r[0].width, r[1].width), (200, 50));
    }
}
