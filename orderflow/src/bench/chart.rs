//! The latency-vs-throughput chart (SVG, `plotters` with only its SVG backend: text is written
//! as SVG `<text>`, so no font library is needed). One colour per run, one marker per
//! percentile; every open-loop phase is a point at its achieved orders/s, and a dotted
//! vertical line marks each run's closed-loop throughput.

use std::path::Path;

use plotters::prelude::*;

use super::report::Report;

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

/// Draw `runs` (this run first, then any compared) into an SVG file at `path`.
pub fn draw(path: &Path, runs: &[&Report]) -> anyhow::Result<()> {
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

fn chart_error<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {error}")
}
