//! compare.svg: grouped bars per scenario (size × connections), one bar per server, one panel per
//! headline metric, log-scaled so 20 B and 16 KiB runs share an axis. Peers' bars carry their ratio
//! to ringws. With `--repeat` each bar is the server's median over the rounds; at a fixed rate a bar
//! whose runs fell short of the rate is labelled `short`. SVG only: text is left to the viewer's
//! fonts, so nothing here needs a font library.

use crate::report::{BASELINE, Metric, Report, size_label, thousands};
use plotters::coord::combinators::BindKeyPoints;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The panels, top to bottom.
const PANELS: [Metric; 3] = [Metric::MsgsPerS, Metric::P99, Metric::MsgsPerServerCpuS];

/// Chart size in pixels.
const SIZE: (u32, u32) = (1400, 1200);

/// Height of the legend strip under the title, in pixels.
const LEGEND_HEIGHT: u32 = 30;

/// Server colours, in the order servers were listed; ringws first when run with the defaults.
const COLOURS: [RGBColor; 4] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
];

/// X units per scenario. The x axis is integer (plotters formats tick labels only for ranges with
/// default formatting, which its f64 range with key points lacks), so bars are placed in these units.
const SLOT: i32 = 1000;

/// Share of a scenario's width taken by its bars (the rest separates scenarios).
const GROUP_WIDTH: f64 = 0.8;

/// Why the chart could not be drawn.
#[derive(Debug)]
pub struct ChartError(String);

impl std::fmt::Display for ChartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "drawing compare.svg: {}", self.0)
    }
}

impl std::error::Error for ChartError {}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for ChartError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        ChartError(e.to_string())
    }
}

/// Renders the report's chart as an SVG document.
pub fn svg(report: &Report) -> Result<String, ChartError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let cfg = &report.config;
        let load = match (cfg.rates.is_empty(), cfg.in_flight) {
            (true, Some(n)) => format!("{n} in flight"),
            (true, None) => "closed loop".to_owned(),
            (false, _) => {
                let rates: Vec<String> = cfg
                    .rates
                    .iter()
                    .map(|r| format!("{} {}/s", size_label(r.size), thousands(r.msgs_per_s)))
                    .collect();
                format!("fixed rate {}", rates.join(", "))
            }
        };
        let rounds = if cfg.repeat > 1 {
            format!(", medians of {} rounds", cfg.repeat)
        } else {
            String::new()
        };
        let title = format!(
            "ringws vs. peers — echo, {load}{rounds}, server on CPU {}, load on CPU {} ({}, {})",
            report.config.server_cpu,
            report.config.load_cpu,
            report.environment.kernel,
            report.environment.date_utc,
        );
        // A sans-serif character is about 0.55 of the font size wide (0.6 leaves a margin): a
        // long title gets a smaller font, so it stays on the chart.
        let title_px = (f64::from(SIZE.0) / 0.6 / title.chars().count() as f64).clamp(10.0, 22.0);
        let root = root.titled(&title, ("sans-serif", title_px))?;
        let (legend_area, body) = root.split_vertically(LEGEND_HEIGHT);
        legend(&legend_area, &report.config.servers)?;
        let panels = body.split_evenly((PANELS.len(), 1));
        for (area, metric) in panels.iter().zip(PANELS) {
            panel(area, report, metric)?;
        }
        root.present()?;
    }
    Ok(out)
}

/// One panel: every scenario's bars for `metric`.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    report: &Report,
    metric: Metric,
) -> Result<(), ChartError>
where
    DB::ErrorType: 'static,
{
    let scenarios = report.scenarios();
    let servers = &report.config.servers;
    let values: Vec<f64> = report
        .medians
        .iter()
        .filter_map(|r| metric.of(&r.metrics))
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let (lo, hi) = log_bounds(&values);
    let labels: Vec<String> = scenarios
        .iter()
        .map(|(size, conns)| format!("{} × {}", size_label(*size), thousands(f64::from(*conns))))
        .collect();
    let slots = i32::try_from(scenarios.len().max(1)).unwrap_or(i32::MAX / SLOT);
    let centres: Vec<i32> = (0..slots).map(|i| i * SLOT + SLOT / 2).collect();
    let x_label = |x: &i32| {
        let i = x.div_euclid(SLOT);
        if x.rem_euclid(SLOT) == SLOT / 2 {
            usize::try_from(i)
                .ok()
                .and_then(|i| labels.get(i))
                .cloned()
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    let y_label = |y: &f64| thousands(*y);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} ({}, log scale)", metric.title(), metric.better()),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(90)
        .build_cartesian_2d(
            (0..slots * SLOT).with_key_points(centres),
            (lo..hi).log_scale(),
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .y_labels(6)
        .y_desc(metric.title())
        .x_desc("message size × connections")
        .draw()?;

    let bar = GROUP_WIDTH * f64::from(SLOT) / servers.len().max(1) as f64;
    let x = |units: f64| units.round() as i32;
    let ratio_style =
        TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (s, server) in servers.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        let mut bars = Vec::new();
        let mut ratios = Vec::new();
        for (i, (size, conns)) in scenarios.iter().enumerate() {
            let Some(row) = report.median_of(server, *size, *conns) else {
                continue;
            };
            let Some(v) = metric
                .of(&row.metrics)
                .filter(|v| *v > 0.0 && v.is_finite())
            else {
                continue;
            };
            let x0 = (i as f64 + (1.0 - GROUP_WIDTH) / 2.0) * f64::from(SLOT) + s as f64 * bar;
            bars.push(Rectangle::new(
                [(x(x0), lo), (x(x0 + bar * 0.92), v)],
                colour.filled(),
            ));
            let ratio = row
                .ratio_to_ringws
                .as_ref()
                .and_then(|m| metric.of(m))
                .filter(|_| server != BASELINE)
                .map(|r| format!("{r:.2}×"));
            let short = (row.short_of_rate > 0).then_some("short");
            let label: Vec<String> = ratio.into_iter().chain(short.map(str::to_owned)).collect();
            if !label.is_empty() {
                ratios.push(Text::new(
                    label.join(" "),
                    (x(x0 + bar / 2.0), v),
                    ratio_style.clone(),
                ));
            }
        }
        chart.draw_series(bars)?;
        chart.draw_series(ratios)?;
    }
    Ok(())
}

/// One legend for every panel, in a strip of its own so it never hides a bar.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    servers: &[String],
) -> Result<(), ChartError>
where
    DB::ErrorType: 'static,
{
    let style =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let y = i32::try_from(LEGEND_HEIGHT / 2).unwrap_or(0);
    for (s, server) in servers.iter().enumerate() {
        let x = 110 + 190 * i32::try_from(s).unwrap_or(0);
        let colour = COLOURS[s % COLOURS.len()];
        area.draw(&Rectangle::new(
            [(x, y - 7), (x + 14, y + 7)],
            colour.filled(),
        ))?;
        area.draw(&Text::new(server.as_str(), (x + 22, y), style.clone()))?;
    }
    Ok(())
}

/// Decade bounds around the positive values (1..10 when there are none), with headroom above the
/// tallest bar for its ratio label.
fn log_bounds(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    if !min.is_finite() || max <= 0.0 {
        return (1.0, 10.0);
    }
    let lo = 10f64.powf(min.log10().floor());
    let hi = 10f64.powf((max * 2.0).log10().ceil());
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environment::Environment;
    use crate::report::tests::{cpu, load, rated_report};
    use crate::report::{Config, Run};

    #[test]
    fn bounds_are_decades_around_the_data() {
        assert_eq!(log_bounds(&[]), (1.0, 10.0));
        assert_eq!(log_bounds(&[150.0, 42_000.0]), (100.0, 100_000.0));
        assert_eq!(log_bounds(&[3.0]), (1.0, 10.0));
    }

    #[test]
    fn draws_every_scenario_server_and_ratio() {
        let mut runs = Vec::new();
        for (size, conns) in [(20, 100), (1024, 1000)] {
            runs.push(Run::new(
                "ringws",
                conns,
                size,
                Some(load(200_000.0, 10.0, 20.0)),
                Some(cpu(10.0, 5.0, 9.0)),
                None,
            ));
            runs.push(Run::new(
                "tungstenite",
                conns,
                size,
                Some(load(50_000.0, 40.0, 80.0)),
                Some(cpu(10.0, 9.0, 5.0)),
                None,
            ));
        }
        runs.push(Run::new(
            "fastwebsockets",
            100,
            20,
            None,
            None,
            Some("failed".into()),
        ));
        let mut report = Report {
            environment: Environment::sample(),
            config: Config {
                duration_s: 1.0,
                warmup_s: 1.0,
                in_flight: Some(1),
                rates: Vec::new(),
                repeat: 1,
                connections: vec![100, 1000],
                sizes: vec![20, 1024],
                servers: vec![
                    "ringws".into(),
                    "fastwebsockets".into(),
                    "tungstenite".into(),
                ],
                baseline: None,
                server_cpu: 0,
                load_cpu: 1,
                load_command: String::new(),
                cpu_window: String::new(),
            },
            runs,
            medians: Vec::new(),
            interrupted: false,
        };
        report.fill_ratios();
        let svg = svg(&report).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        for text in [
            "20 B × 100",
            "1 KiB × 1,000",
            "ringws",
            "tungstenite",
            "fastwebsockets",
            "0.25×",
            "4.00×",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        // 3 panels × 2 scenarios of ringws bars, plus its one legend swatch.
        let ringws_fill = "fill=\"#D62728\"";
        assert_eq!(
            svg.matches(ringws_fill).count(),
            3 * 2 + 1,
            "ringws bars and legend swatch"
        );
    }

    #[test]
    fn fixed_rate_medians_and_short_runs_are_labelled() {
        let svg = svg(&rated_report()).unwrap();
        for text in [
            "fixed rate 1 KiB 10,000/s",
            "medians of 2 rounds",
            // fastwebsockets' median msg per CPU-s ratio, and its round that fell short.
            "0.56× short",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        // One bar per server per panel (the medians), not one per round.
        assert_eq!(svg.matches("fill=\"#D62728\"").count(), 3 + 1);
    }
}
