//! The latency-vs-throughput chart (SVG, `plotters` with only its SVG backend: text is written
//! as SVG `<text>`, so no font library is needed). One colour per run, one marker per
//! percentile; every open-loop phase is a point at its achieved orders/s, and a dotted
//! vertical line marks each run's closed-loop throughput. A soak gets a chart over time
//! instead (`draw_soak`): the child's RSS above, its latency per window below.

use std::path::Path;

use plotters::prelude::*;

use super::report::{PhaseReport, Report};

const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// One series: a percentile of one run over its open-loop phases.
struct Series {
    label: String,
    colour: RGBColor,
    marker: Marker,
    points: Vec<(f64, f64)>,
}

#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Triangle,
    Cross,
    Square,
}

fn series_of(report: &Report, colour: RGBColor) -> Vec<Series> {
    type Pick = fn(&super::report::Latency) -> Option<f64>;
    let metrics: [(&str, Marker, Pick); 4] = [
        ("terminal p50", Marker::Circle, |l| {
            l.terminal.as_ref().map(|p| p.p50)
        }),
        ("terminal p99", Marker::Triangle, |l| {
            l.terminal.as_ref().map(|p| p.p99)
        }),
        ("terminal p99.9", Marker::Cross, |l| {
            l.terminal.as_ref().map(|p| p.p999)
        }),
        ("visible p99", Marker::Square, |l| {
            l.visible.as_ref().map(|p| p.p99)
        }),
    ];
    metrics
        .into_iter()
        .map(|(name, marker, pick)| {
            let mut points: Vec<(f64, f64)> = report
                .phases
                .iter()
                .filter(|p| p.kind != "closed")
                .filter_map(|p| Some((p.orders_per_s?, pick(&p.latency_ms)?.max(1.0))))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                label: format!("{}: {name}", report.label),
                colour,
                marker,
                points,
            }
        })
        .collect()
}

/// Draw `runs` (this run first, then any compared) into an SVG file at `path`; a soak (the
/// first run's phase with samples over time) is drawn over time by `draw_soak`.
pub fn draw(path: &Path, runs: &[&Report]) -> anyhow::Result<()> {
    if let Some(soak) = runs
        .first()
        .and_then(|run| run.phases.iter().find(|p| !p.soak_samples.is_empty()))
    {
        return draw_soak(path, &runs[0].label, soak);
    }
    let mut all: Vec<Series> = Vec::new();
    let mut closed: Vec<(String, RGBColor, f64)> = Vec::new();
    for (i, report) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        all.extend(series_of(report, colour));
        if let Some(rate) = report
            .phases
            .iter()
            .find(|p| p.kind == "closed")
            .and_then(|p| p.orders_per_s)
        {
            closed.push((report.label.clone(), colour, rate));
        }
    }
    let x_max = all
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(closed.iter().map(|c| c.2))
        .fold(100.0_f64, f64::max)
        * 1.1;
    let y_min_seen = all
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(f64::INFINITY, f64::min);
    // A decade below the fastest point, at least 1 ms.
    let y_min = if y_min_seen.is_finite() {
        10f64.powf((y_min_seen / 1.5).log10().floor()).max(1.0)
    } else {
        1.0
    };
    let y_max = all
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(100.0_f64, f64::max)
        * 2.0;

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let title = if runs.len() == 1 {
        format!("orderflow bench: {} — latency vs throughput", runs[0].label)
    } else {
        "orderflow bench — latency vs throughput".to_string()
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .x_desc("orders/s achieved (open loop; dotted: closed-loop maximum)")
        .y_desc("latency from create, ms (log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(chart_error)?;

    for series in &all {
        if series.points.is_empty() {
            continue;
        }
        let colour = series.colour;
        chart
            .draw_series(LineSeries::new(
                series.points.clone(),
                colour.stroke_width(1),
            ))
            .map_err(chart_error)?;
        let points = series.points.iter().copied();
        let drawn = match series.marker {
            Marker::Circle => chart.draw_series(points.map(|p| Circle::new(p, 4, colour.filled()))),
            Marker::Triangle => {
                chart.draw_series(points.map(|p| TriangleMarker::new(p, 5, colour.filled())))
            }
            Marker::Cross => {
                chart.draw_series(points.map(|p| Cross::new(p, 4, colour.stroke_width(2))))
            }
            Marker::Square => chart.draw_series(points.map(|p| {
                EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], colour.stroke_width(2))
            })),
        }
        .map_err(chart_error)?;
        let marker = series.marker;
        drawn.label(series.label.clone()).legend(move |(x, y)| {
            let style = colour.filled();
            match marker {
                Marker::Circle => Circle::new((x + 10, y), 4, style).into_dyn(),
                Marker::Triangle => TriangleMarker::new((x + 10, y), 5, style).into_dyn(),
                Marker::Cross => Cross::new((x + 10, y), 4, colour.stroke_width(2)).into_dyn(),
                Marker::Square => {
                    Rectangle::new([(x + 6, y - 4), (x + 14, y + 4)], colour.stroke_width(2))
                        .into_dyn()
                }
            }
        });
    }
    // Each open-loop phase's offered rate next to its p50 point.
    for (i, report) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let labels: Vec<((f64, f64), String)> = report
            .phases
            .iter()
            .filter(|p| p.kind != "closed")
            .filter_map(|p| {
                let x = p.orders_per_s?;
                let y = p.latency_ms.terminal.as_ref()?.p50.max(y_min);
                Some(((x, y), format!("{}/s offered", p.offered_per_s?)))
            })
            .collect();
        chart
            .draw_series(labels.into_iter().map(|(at, text)| {
                EmptyElement::at(at)
                    + Text::new(text, (6, 4), ("sans-serif", 11).into_font().color(&colour))
            }))
            .map_err(chart_error)?;
    }
    for (label, colour, rate) in &closed {
        let dots: Vec<(f64, f64)> = (0..60)
            .map(|i| (*rate, y_min * (y_max / y_min).powf(f64::from(i) / 59.0)))
            .collect();
        chart
            .draw_series(dots.into_iter().map(|p| Circle::new(p, 1, colour.filled())))
            .map_err(chart_error)?
            .label(format!("{label}: closed loop {rate:.0} orders/s"))
            .legend({
                let colour = *colour;
                move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(chart_error)?;
    root.present().map_err(chart_error)?;
    Ok(())
}

/// A soak over time: the child's RSS (and its peak so far) in MB above, the terminal latency
/// p50 / p99 of the orders published in each window (log scale) below.
fn draw_soak(path: &Path, label: &str, soak: &PhaseReport) -> anyhow::Result<()> {
    let mb = |kb: Option<u64>| kb.map(|kb| kb as f64 / 1024.0);
    let rss: Vec<(f64, f64)> = soak
        .soak_samples
        .iter()
        .filter_map(|s| Some((s.t_secs, mb(s.rss_kb)?)))
        .collect();
    let hwm: Vec<(f64, f64)> = soak
        .soak_samples
        .iter()
        .filter_map(|s| Some((s.t_secs, mb(s.hwm_kb)?)))
        .collect();
    let window = |pick: fn(&super::stats::Percentiles) -> f64| -> Vec<(f64, f64)> {
        soak.soak_windows
            .iter()
            .filter_map(|w| Some((w.from_secs, pick(w.terminal.as_ref()?).max(1.0))))
            .collect()
    };
    let p50 = window(|p| p.p50);
    let p99 = window(|p| p.p99);
    let t_max = rss.iter().chain(&p50).map(|p| p.0).fold(10.0_f64, f64::max);
    let rss_max = hwm.iter().chain(&rss).map(|p| p.1).fold(10.0_f64, f64::max) * 1.15;
    let lat_max = p99.iter().map(|p| p.1).fold(100.0_f64, f64::max) * 2.0;
    let lat_min = p50.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let lat_min = if lat_min.is_finite() {
        10f64.powf((lat_min / 1.5).log10().floor()).max(1.0)
    } else {
        1.0
    };

    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let rate = soak
        .offered_per_s
        .map_or_else(String::new, |r| format!(" at {r} orders/s"));
    let root = root
        .titled(
            &format!("orderflow bench: {label} — soak{rate}"),
            ("sans-serif", 20),
        )
        .map_err(chart_error)?;
    let (upper, lower) = root.split_vertically(300);

    let mut chart = ChartBuilder::on(&upper)
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..t_max, 0.0..rss_max)
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the soak")
        .y_desc("orderflow run RSS, MB")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(chart_error)?;
    for (points, name, colour) in [
        (&rss, "RSS", COLOURS[0]),
        (&hwm, "peak RSS so far", COLOURS[1]),
    ] {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(chart_error)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(chart_error)?;

    let mut chart = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..t_max, (lat_min..lat_max).log_scale())
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the soak (orders published in each window)")
        .y_desc("create → terminal, ms (log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(chart_error)?;
    for (points, name, colour) in [
        (&p50, "terminal p50", COLOURS[2]),
        (&p99, "terminal p99", COLOURS[3]),
    ] {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(chart_error)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(chart_error)?;
    root.present().map_err(chart_error)?;
    Ok(())
}

fn chart_error<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soak_is_drawn_over_time_with_rss_and_latency() {
        // The soak of README's Benchmark section, as `orderflow bench` wrote it.
        let report: Report =
            serde_json::from_str(include_str!("../../../docs/bench/soak-400.json"))
                .expect("the committed soak report parses");
        let dir = std::env::temp_dir().join(format!("orderflow-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("soak.svg");
        draw(&path, &[&report]).expect("the soak chart draws");
        let svg = std::fs::read_to_string(&path).expect("the chart was written");
        std::fs::remove_dir_all(&dir).ok();
        assert!(svg.contains("soak at 400 orders/s"), "title names the soak");
        assert!(svg.contains("orderflow run RSS, MB"), "an RSS axis");
        assert!(svg.contains("terminal p99"), "a latency series");
        assert!(!svg.contains("latency vs throughput"), "not the rate chart");
    }
}
