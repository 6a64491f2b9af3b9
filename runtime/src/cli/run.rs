//! `patchbay run` and `patchbay dlq replay`: pipelines to the end, with progress, summaries,
//! sandbox denials and graceful Ctrl-C.

use super::*;

pub(super) async fn run(
    runtime: &Arc<Runtime>,
    path: &Path,
    progress: Duration,
    admin: Option<std::net::SocketAddr>,
    admin_token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    // `--admin` wins over `[admin] listen` in the file.
    let admin = match admin.or(config.admin) {
        Some(addr) => Some((
            crate::admin::bind(addr, admin_token.is_some()).await?,
            admin_token,
        )),
        None => None,
    };
    let loaded = assemble::load(runtime, &config).await?;
    let telemetry = match &config.telemetry {
        Some(decl) => Some(crate::telemetry::Telemetry::start(decl)?),
        None => None,
    };
    let assemble::Planned {
        plans,
        swappables,
        failed,
        ..
    } = assemble::plan(runtime, &config, &loaded).await;
    for (_, why) in &failed {
        for line in why.to_string().lines() {
            eprintln!("error: {line}");
        }
    }
    if !failed.is_empty() && (plans.is_empty() || config.on_start_failure == OnStartFailure::Abort)
    {
        if !plans.is_empty() {
            eprintln!(
                "error: on_start_failure = \"abort\": no pipeline runs; fix the one{} above, or \
                 set on_start_failure = \"continue\" to run the others",
                if failed.len() == 1 { "" } else { "s" }
            );
        }
        return Ok(ExitCode::FAILURE);
    }

    let (drain_tx, drain_rx) = watch::channel(false);
    let (abort_tx, abort_rx) = watch::channel(false);
    let control = Control {
        drain: drain_rx,
        abort: abort_rx,
    };
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: finishing the messages in flight (interrupt again to abort)");
        let _ = drain_tx.send(true);
        wait_for_signal().await;
        tracing::warn!("aborting: messages in flight are not acknowledged and will be redelivered");
        let _ = abort_tx.send(true);
    });

    let started = Instant::now();
    let mut handles = Vec::new();
    let mut live: Vec<(String, Arc<Counters>)> = Vec::new();
    let mut running: Vec<Arc<PipelineStatus>> = Vec::new();
    let mut statuses = Vec::new();
    let mut dead_letter_files = std::collections::BTreeMap::new();
    for mut plan in plans {
        plan.tracer = telemetry.as_ref().map(crate::telemetry::Telemetry::tracer);
        let counters = plan.counters();
        live.push((plan.name.clone(), counters.clone()));
        let decl = config.pipelines.iter().find(|p| p.name == plan.name);
        let sinks = decl
            .map(|p| p.sinks.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default();
        let mut status = PipelineStatus::new(plan.name.clone(), sinks, counters.clone());
        if decl.is_some_and(|d| d.dead_letter_sink.is_none()) {
            status = status.with_dead_letters(plan.dead_letters.clone());
            dead_letter_files.insert(plan.name.clone(), plan.dead_letters.clone());
        }
        let status = Arc::new(status);
        statuses.push(status.clone());
        running.push(status.clone());
        let control = control.clone();
        handles.push(tokio::spawn(async move {
            let report = pipeline::run(plan, control, counters).await;
            // Said the moment it happens, not only in the summary at exit.
            if let Some(failure) = &report.failure {
                tracing::error!("{failure}; the other pipelines go on");
            }
            status.end(report.failure.as_ref().map(ToString::to_string));
            report
        }));
    }
    // A pipeline that could not start shows as failed on the admin API (`/health` degraded).
    for (name, why) in &failed {
        let status = Arc::new(PipelineStatus::new(
            name.clone(),
            Vec::new(),
            Arc::new(Counters::default()),
        ));
        status.end(Some(format!("it could not start: {why}")));
        statuses.push(status);
    }
    let mut watchers = Vec::new();
    for plugin in swappables.values().filter(|p| p.watched()) {
        watchers.push(crate::reload::watch(runtime.clone(), plugin.clone())?);
    }
    if let Some((listener, token)) = admin {
        crate::admin::spawn(
            listener,
            Admin::new(
                runtime.clone(),
                statuses,
                swappables,
                token,
                Some(Arc::new(assemble::Replayer::new(
                    runtime.clone(),
                    Arc::new(config),
                    Arc::new(loaded),
                    dead_letter_files,
                ))),
            ),
        );
    }

    let mut ticker = tokio::time::interval(if progress.is_zero() {
        Duration::from_secs(3600)
    } else {
        progress
    });
    ticker.tick().await;
    let mut last: Vec<u64> = vec![0; live.len()];
    let mut last_at = Instant::now();
    let all = futures_join(handles);
    tokio::pin!(all);
    let reports: Vec<Report> = loop {
        tokio::select! {
            reports = &mut all => break reports,
            _ = ticker.tick(), if !progress.is_zero() => {
                let now = Instant::now();
                let secs = now.duration_since(last_at).as_secs_f64().max(1e-9);
                for (i, (name, counters)) in live.iter().enumerate() {
                    // A pipeline that failed said so when it did; it is not counted on.
                    if running.get(i).is_some_and(|s| s.phase() == Phase::Failed) {
                        continue;
                    }
                    let polled = counters.polled.load(Ordering::Relaxed);
                    let rate = (polled - last[i]) as f64 / secs;
                    last[i] = polled;
                    let written: u64 = counters.written.iter().map(|w| w.load(Ordering::Relaxed)).sum();
                    eprintln!(
                        "progress: pipeline `{name}`: {polled} in, {written} written, {:.0} msg/s, {:.0}s",
                        rate,
                        started.elapsed().as_secs_f64()
                    );
                }
                last_at = now;
            }
        }
    };

    if let Some(telemetry) = telemetry {
        // The last spans leave before the summary.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    let mut stopped = !failed.is_empty();
    for report in &reports {
        print_summary(report);
        if let Some(failure) = &report.failure {
            stopped = true;
            eprintln!("error: {failure}");
        }
    }
    for (name, _) in &failed {
        eprintln!("error: pipeline `{name}` did not run: it could not start (see above)");
    }
    print_denials(runtime);
    Ok(if stopped {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `sandbox denied N accesses: CAPABILITY by PLUGIN (COUNT), …`, when any were denied.
pub(super) fn print_denials(runtime: &Runtime) {
    let denied = runtime.audit().denied();
    if denied.is_empty() {
        return;
    }
    let total: u64 = denied.values().sum();
    let parts: Vec<String> = denied
        .iter()
        .map(|((plugin, capability), n)| format!("{capability} by {plugin} ({n})"))
        .collect();
    eprintln!(
        "sandbox denied {total} access{}: {}",
        if total == 1 { "" } else { "es" },
        parts.join(", ")
    );
}

pub(super) async fn futures_join(handles: Vec<tokio::task::JoinHandle<Report>>) -> Vec<Report> {
    let mut reports = Vec::new();
    for handle in handles {
        match handle.await {
            Ok(report) => reports.push(report),
            Err(e) => tracing::error!("a pipeline task ended abnormally: {e}"),
        }
    }
    reports
}

pub(super) async fn replay(
    runtime: &Arc<Runtime>,
    path: &Path,
    name: &str,
    from: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let Some(pipeline) = config.pipelines.iter().find(|p| p.name == name) else {
        let names: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
        anyhow::bail!(
            "{}: no pipeline named `{name}`; it has: {}",
            path.display(),
            names.join(", ")
        );
    };
    let file = from.map_or_else(|| pipeline.dead_letter.clone(), Path::to_path_buf);
    if !file.exists() && from.is_none() {
        println!(
            "pipeline `{name}`: no dead letters ({} does not exist)",
            file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let entries = dead_letter::read(&file).map_err(anyhow::Error::msg)?;
    let replayed = assemble::check_entries(pipeline, entries, &file.display().to_string())
        .map_err(anyhow::Error::msg)?;
    if replayed.is_empty() {
        println!("pipeline `{name}`: no dead letters in {}", file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let count = replayed.len();
    // New failures must not land in the file being read: set it aside first.
    let aside = if file == pipeline.dead_letter {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let aside = file.with_extension(format!("jsonl.replaying-{millis}"));
        std::fs::rename(&file, &aside)
            .map_err(|e| anyhow::anyhow!("cannot move {} aside for replay: {e}", file.display()))?;
        Some(aside)
    } else {
        None
    };
    let loaded = assemble::load(runtime, &config).await?;
    let plan = assemble::plan_replay(runtime, &config, &loaded, pipeline, replayed).await?;
    let (_drain_tx, drain) = watch::channel(false);
    let (_abort_tx, abort) = watch::channel(false);
    let counters = plan.counters();
    let report = pipeline::run(plan, Control { drain, abort }, counters).await;
    print_summary(&report);
    if let Some(failure) = &report.failure {
        if let Some(aside) = &aside {
            eprintln!(
                "error: replay stopped; the entries being replayed are kept in {}",
                aside.display()
            );
        }
        eprintln!("error: {failure}");
        return Ok(ExitCode::FAILURE);
    }
    if let Some(aside) = aside {
        std::fs::remove_file(&aside)
            .map_err(|e| anyhow::anyhow!("replayed, but cannot remove {}: {e}", aside.display()))?;
    }
    let again = report.counters.dead_lettered.load(Ordering::Relaxed);
    println!(
        "replayed {count} dead letters of pipeline `{name}`: {} delivered, {again} dead-lettered again{}",
        count as u64 - again,
        if again > 0 {
            format!(" (in {})", pipeline.dead_letter.display())
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn print_summary(report: &Report) {
    let c = &report.counters;
    let polled = c.polled.load(Ordering::Relaxed);
    let secs = report.elapsed.as_secs_f64();
    let sinks: Vec<String> = report
        .sinks
        .iter()
        .zip(&c.written)
        .map(|(name, n)| format!("{} written to `{name}`", n.load(Ordering::Relaxed)))
        .collect();
    let dead = c.dead_lettered.load(Ordering::Relaxed);
    let mut dead = if dead > 0 {
        format!(", {dead} dead-lettered")
    } else {
        String::new()
    };
    let timeouts = c.reply_timeouts.load(Ordering::Relaxed);
    if timeouts > 0 {
        dead.push_str(&format!(
            ", {timeouts} request{} timed out (reply_timeout)",
            if timeouts == 1 { "" } else { "s" }
        ));
    }
    let restarts = c.restarts.load(Ordering::Relaxed);
    if restarts > 0 {
        dead.push_str(&format!(
            ", {restarts} instance{} restarted after traps",
            if restarts == 1 { "" } else { "s" }
        ));
    }
    eprintln!(
        "pipeline `{}`: {} in, {} dropped, {}{dead}; {:.2}s, {:.0} msg/s",
        report.name,
        polled,
        c.dropped.load(Ordering::Relaxed),
        sinks.join(", "),
        secs,
        if secs > 0.0 {
            polled as f64 / secs
        } else {
            0.0
        }
    );
}

pub(super) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
