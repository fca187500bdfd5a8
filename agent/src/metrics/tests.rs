//! The registry's own tests: names, chunks, and a timing printout run by hand.

mod exposition {
    use super::super::series::SERIES_FAMILIES;
    use super::super::*;
    use resmon_policies::{CheckKind, State};

    #[test]
    fn counters_are_named_with_total_in_text_format() {
        let m = Metrics::new();
        let r = m.resource(ResourceLabels {
            group: "g".into(),
            resource: "r".into(),
            kind: TypeLabel { r#type: "tcp" },
        });
        r.restart();
        r.transition(State::Online, 1.0);
        let text = m.encode_text();
        assert!(
            text.contains("# TYPE resmon_resource_restarts_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "resmon_resource_restarts_total{group=\"g\",resource=\"r\",type=\"tcp\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "resmon_resource_state{state=\"online\",group=\"g\",resource=\"r\",type=\"tcp\"} 1\n"
        ));
        assert!(!text.contains("# EOF"));
        m.forget(&r.labels);
        assert!(!m.encode_text().contains("resource=\"r\""));
    }

    #[test]
    fn a_large_exposition_comes_in_bounded_chunks_that_add_up_to_every_series() {
        let m = Metrics::new();
        let handles: Vec<ResourceMetrics> = (0..3000)
            .map(|i| {
                m.resource(ResourceLabels {
                    group: format!("g{}", i / 100),
                    resource: format!("r{i}"),
                    kind: TypeLabel { r#type: "smtp" },
                })
            })
            .collect();
        let chunks: Vec<String> = m.encode_chunks(false).collect();
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        for chunk in &chunks {
            // A chunk stops at the first resource past the mark: one resource's lines more.
            assert!(chunk.len() < CHUNK_BYTES + 2048, "{}", chunk.len());
            assert!(chunk.is_empty() || chunk.ends_with('\n'));
        }
        let text = chunks.concat();
        for family in SERIES_FAMILIES.map(|f| f.0) {
            assert_eq!(
                text.matches(&format!("# TYPE {family}")).count(),
                1,
                "{family}"
            );
        }
        let mut lines_per_resource = std::collections::HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some(rest) = line.split("resource=\"").nth(1) {
                let resource = rest.split('"').next().unwrap();
                *lines_per_resource.entry(resource).or_insert(0) += 1;
            }
        }
        assert_eq!(lines_per_resource.len(), handles.len());
        for h in &handles {
            // A line per state, per check kind, restarts and last transition.
            let expected = State::ALL.len() + CheckKind::ALL.len() + 2;
            assert_eq!(lines_per_resource[h.labels.resource.as_str()], expected);
        }
    }
}

mod scrape_timing {
    use super::super::*;
    use resmon_policies::CheckKind;

    #[test]
    #[ignore = "prints timings; run with --release --ignored"]
    fn encode_timing() {
        let m = Metrics::new();
        let mut keep = Vec::new();
        for i in 0..10_000 {
            let r = m.resource(ResourceLabels {
                group: format!("g{}", i / 100),
                resource: format!("r{i}"),
                kind: TypeLabel { r#type: "tcp" },
            });
            r.check_duration(CheckKind::IsAlive, 0.001);
            keep.push(r);
        }
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let text = m.encode_text();
            println!("encode_text {:?} size {}", t.elapsed(), text.len());
        }
    }
}
