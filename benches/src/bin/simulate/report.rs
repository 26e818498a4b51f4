//! The report: markdown tables and the CCDF plot.

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::model::{Outcome, Scenario, nanos};
use crate::{CONTENDERS, DEADLINE};

fn ms(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    match ms {
        ms if ms < 10.0 => format!("{ms:.2}"),
        ms if ms < 100.0 => format!("{ms:.1}"),
        ms => format!("{ms:.0}"),
    }
}

fn percent(part: usize, all: usize) -> String {
    let p = 100.0 * part as f64 / all.max(1) as f64;
    if part > 0 && p < 0.01 {
        "< 0.01".to_owned()
    } else {
        format!("{p:.2}")
    }
}

pub(crate) fn table(scenario: Scenario, outcomes: &[Outcome]) -> String {
    let mut out = format!("### {}\n\n", scenario.title());
    out.push_str(
        "| strategy | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | over 1 s (%) \
         | to b3, t = 20-40 s (%) | to b3, t = 40-60 s (%) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (contender, o) in CONTENDERS.iter().zip(outcomes) {
        let over = o.latencies.len() - o.latencies.partition_point(|&l| l <= nanos(DEADLINE));
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            contender.name,
            ms(o.percentile(50.0)),
            ms(o.percentile(99.0)),
            ms(o.percentile(99.9)),
            ms(o.latencies.last().copied().unwrap_or_default()),
            percent(over, o.latencies.len()),
            percent(o.in_window_to_b3, o.in_window),
            percent(o.after_window_to_b3, o.after_window),
        );
    }
    out
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(158, 202, 225),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// The CCDF (share of requests slower than x) of every strategy, one panel per scenario.
pub(crate) fn plot(
    path: &Path,
    results: &[(Scenario, Vec<Outcome>)],
) -> Result<(), Box<dyn Error>> {
    let slowest = results
        .iter()
        .flat_map(|(_, outcomes)| outcomes)
        .filter_map(|o| o.latencies.last())
        .max()
        .copied()
        .unwrap_or(1) as f64
        / 1e6;
    let x_max = 10f64.powf(slowest.log10().ceil());
    let (x_min, y_min) = (0.1, 1e-6);
    let root = SVGBackend::new(path, (1400, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, results.len()));
    for ((scenario, outcomes), panel) in results.iter().zip(&panels) {
        let mut chart = ChartBuilder::on(panel)
            .caption(scenario.title(), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d((x_min..x_max).log_scale(), (y_min..1.0f64).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("latency x (queueing + service)")
            .y_desc("share of requests slower than x")
            .x_label_formatter(&|x| {
                if *x >= 1000.0 {
                    format!("{} s", x / 1000.0)
                } else {
                    format!("{x} ms")
                }
            })
            .y_label_formatter(&|y| format!("{} %", y * 100.0))
            .draw()?;
        let deadline = nanos(DEADLINE) as f64 / 1e6;
        chart
            .draw_series(DashedLineSeries::new(
                [(deadline, y_min), (deadline, 1.0)],
                6,
                4,
                BLACK.mix(0.5).stroke_width(1),
            ))?
            .label("1 s deadline")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.5)));
        for (i, (contender, outcome)) in CONTENDERS.iter().zip(outcomes).enumerate() {
            // 50 points per decade, up to the slowest request (a log axis cannot show 0).
            let points: Vec<(f64, f64)> = (0..)
                .map(|k| x_min * 10f64.powf(f64::from(k) / 50.0))
                .take_while(|&x| x <= x_max)
                .map(|x| (x, outcome.slower_than(x * 1e6)))
                .take_while(|&(_, y)| y > 0.0)
                .collect();
            // Weighted round robin draws the same curve as round robin: that one is wider, beneath.
            let width = if i == 0 { 5 } else { 2 };
            let colour = COLOURS[i];
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(width)))?
                .label(contender.name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(width))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
