//! Running under the operating system's service manager.
//!
//! Design note:
//! - Linux: systemd runs `storesync-agent --service run` (installers/linux/storesync-agent.service); SIGTERM is the
//!   stop request and takes the console's path ([`crate::signal`]). Nothing here is Linux-specific.
//! - Windows: the `windows-service` crate. `service install|uninstall|start|stop` talk to the service control
//!   manager; `service run` is what the manager starts. It registers a control handler whose Stop and Shutdown
//!   end in [`crate::signal::stop`], as ctrl-c does in a console run, then runs the agent through the same
//!   [`crate::boot::run`] (boot decision, trial), so a service stop drains in-flight requests and commits exactly
//!   as ctrl-c does.
//! - The service restarts on failure (three restarts, 5 s apart, counted over a day), including a non-zero exit
//!   such as the 70 of a stopped journal writer, like `Restart=on-failure` in the systemd unit.
//! - Self-update on Windows (see `update.rs`): the service swaps the new `.exe` into its own place, spawns
//!   `service restart --after-stop` detached, and reports stopped; that helper waits for the stop and starts the
//!   service again, so the service control manager starts the new version. Rollbacks take the same path.

#[cfg(not(windows))]
use crate::config::Config;

/// The service's name with the service manager.
pub const SERVICE_NAME: &str = "storesync-agent";

#[cfg(not(windows))]
fn windows_only() -> anyhow::Result<()> {
    anyhow::bail!(
        "`storesync-agent service` manages the Windows service; on Linux install installers/linux/\
         storesync-agent.service (or the .deb) and use systemctl"
    )
}

#[cfg(not(windows))]
pub fn install(_config_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    windows_only()
}

#[cfg(not(windows))]
pub fn uninstall() -> anyhow::Result<()> {
    windows_only()
}

#[cfg(not(windows))]
pub fn start() -> anyhow::Result<()> {
    windows_only()
}

#[cfg(not(windows))]
pub fn stop() -> anyhow::Result<()> {
    windows_only()
}

#[cfg(not(windows))]
pub fn restart(_after_stop: bool) -> anyhow::Result<()> {
    windows_only()
}

#[cfg(not(windows))]
pub fn run_as_service(_config: Config) -> anyhow::Result<()> {
    windows_only()
}

#[cfg(windows)]
pub use windows::{install, restart, run_as_service, start, stop, uninstall};

#[cfg(windows)]
#[allow(unsafe_code)] // define_windows_service! expands to the extern "system" entry point the manager calls
mod windows {
    use std::ffi::OsString;
    use std::sync::OnceLock;
    use std::time::Duration;

    use anyhow::Context;
    use tokio_util::sync::CancellationToken;
    use windows_service::service::{
        ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept, ServiceErrorControl,
        ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState,
        ServiceStatus, ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    use windows_service::{define_windows_service, service_dispatcher};

    use super::SERVICE_NAME;
    use crate::config::Config;
    use crate::update;

    /// The configuration `service run` resolved, for the entry point the manager calls (it takes no arguments of
    /// ours).
    static CONFIG: OnceLock<Config> = OnceLock::new();

    define_windows_service!(ffi_service_main, service_main);

    fn manager(access: ServiceManagerAccess) -> anyhow::Result<ServiceManager> {
        ServiceManager::local_computer(None::<&str>, access).context("opening the service control manager")
    }

    pub fn install(config_file: Option<&std::path::Path>) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let mut args: Vec<OsString> = Vec::new();
        if let Some(c) = config_file {
            args.push("--config".into());
            args.push(c.as_os_str().to_owned());
        }
        args.extend(["service".into(), "run".into()]);
        let info = ServiceInfo {
            name: SERVICE_NAME.into(),
            display_name: "storesync store agent".into(),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path: exe,
            launch_arguments: args,
            dependencies: vec![],
            account_name: None, // LocalSystem
            account_password: None,
        };
        let m = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
        let service = m
            .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)
            .context("creating the service (run as Administrator)")?;
        service
            .set_description("Journals every POS sale durably and syncs it to the storesync hub")
            .context("describing the service")?;
        let restart = ServiceAction { action_type: ServiceActionType::Restart, delay: Duration::from_secs(5) };
        service
            .update_failure_actions(ServiceFailureActions {
                reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
                reboot_msg: None,
                command: None,
                actions: Some(vec![restart.clone(), restart.clone(), restart]),
            })
            .context("setting the restart-on-failure actions")?;
        if let Err(e) = service.set_failure_actions_on_non_crash_failures(true) {
            // Windows has it since Vista; Wine's service manager does not (error 124, invalid level).
            eprintln!("warning: the service will restart after a crash but not after a non-zero exit: {e}");
        }
        println!("service {SERVICE_NAME} installed (automatic start); start it with `storesync-agent service start`");
        Ok(())
    }

    pub fn uninstall() -> anyhow::Result<()> {
        let m = manager(ServiceManagerAccess::CONNECT)?;
        let service = m
            .open_service(SERVICE_NAME, ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE)
            .context("opening the service (is it installed?)")?;
        if service.query_status()?.current_state != ServiceState::Stopped {
            let _ = service.stop();
        }
        service.delete().context("removing the service")?;
        println!("service {SERVICE_NAME} removed; its data dir is kept");
        Ok(())
    }

    pub fn start() -> anyhow::Result<()> {
        let m = manager(ServiceManagerAccess::CONNECT)?;
        let service = m.open_service(SERVICE_NAME, ServiceAccess::START).context("opening the service")?;
        service.start::<&str>(&[]).context("starting the service")?;
        println!("service {SERVICE_NAME} starting");
        Ok(())
    }

    /// `service restart`: stops the service (unless `after_stop`: it is already stopping by itself, as after a
    /// self-update), waits until it has stopped, and starts it.
    pub fn restart(after_stop: bool) -> anyhow::Result<()> {
        let m = manager(ServiceManagerAccess::CONNECT)?;
        let service = m
            .open_service(SERVICE_NAME, ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::START)
            .context("opening the service")?;
        if !after_stop && service.query_status()?.current_state != ServiceState::Stopped {
            service.stop().context("stopping the service")?;
        }
        // The drain deadline is at most 300 s; give the stop that long and a little more.
        let deadline = std::time::Instant::now() + Duration::from_secs(330);
        while service.query_status()?.current_state != ServiceState::Stopped {
            if std::time::Instant::now() > deadline {
                anyhow::bail!("the service did not stop within 330 s; not starting it again");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        service.start::<&str>(&[]).context("starting the service")?;
        println!("service {SERVICE_NAME} restarted");
        Ok(())
    }

    /// Has the service control manager start the service again once this process has stopped it.
    fn restart_after_stop() -> anyhow::Result<()> {
        use std::os::windows::process::CommandExt;
        const DETACHED_PROCESS: u32 = 0x0000_0008;
        let exe = std::env::current_exe().context("locating this executable")?;
        std::process::Command::new(&exe)
            .args(["service", "restart", "--after-stop"])
            .creation_flags(DETACHED_PROCESS)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} service restart", exe.display()))?;
        Ok(())
    }

    pub fn stop() -> anyhow::Result<()> {
        let m = manager(ServiceManagerAccess::CONNECT)?;
        let service = m.open_service(SERVICE_NAME, ServiceAccess::STOP).context("opening the service")?;
        service.stop().context("stopping the service")?;
        println!("service {SERVICE_NAME} stopping");
        Ok(())
    }

    /// `service run`: hands this process to the service control manager, which calls [`service_main`].
    pub fn run_as_service(config: Config) -> anyhow::Result<()> {
        let _ = CONFIG.set(config);
        service_dispatcher::start(SERVICE_NAME, ffi_service_main)
            .context("connecting to the service control manager (`service run` is for the manager to start)")
    }

    fn service_main(_arguments: Vec<OsString>) {
        if let Err(e) = serve() {
            tracing::error!(error = %format!("{e:#}"), "the service failed");
        }
    }

    fn status(state: ServiceState, exit: u32, wait: Duration) -> ServiceStatus {
        ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if state == ServiceState::Running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            },
            exit_code: ServiceExitCode::Win32(exit),
            checkpoint: 0,
            wait_hint: wait,
            process_id: None,
        }
    }

    fn serve() -> anyhow::Result<()> {
        let config = CONFIG.get().cloned().context("service started without a configuration")?;
        let shutdown = CancellationToken::new();
        let on_stop = shutdown.clone();
        // The handler reports "stop pending" through the handle that registering it returns.
        let cell: std::sync::Arc<OnceLock<service_control_handler::ServiceStatusHandle>> = Default::default();
        let own = cell.clone();
        // The drain's deadline plus time for the journal's last commit.
        let stop_hint = config.shutdown_deadline + Duration::from_secs(10);
        let handle = service_control_handler::register(SERVICE_NAME, move |event| match event {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                if let Some(h) = own.get() {
                    let _ = h.set_service_status(status(ServiceState::StopPending, 0, stop_hint));
                }
                crate::signal::stop(&on_stop, "service stop requested");
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        })
        .context("registering the service control handler")?;
        let _ = cell.set(handle);
        handle.set_service_status(status(ServiceState::Running, 0, Duration::ZERO))?;
        // The stop comes from the control handler above, not from signals.
        let ran = crate::boot::run(config, shutdown, crate::boot::Signals::Ignore);
        let result = match ran {
            Ok(crate::Exit::Stopped) => Ok(()),
            Ok(crate::Exit::Exec(path)) => update::swap_in(&path).and_then(|()| restart_after_stop()).map(|()| {
                tracing::info!(binary = %path.display(), "self-update: swapped in; the service restarts into it");
            }),
            Err(e) => Err(e),
        };
        let exit = match &result {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the agent stopped with an error");
                1
            }
        };
        handle.set_service_status(status(ServiceState::Stopped, exit, Duration::ZERO))?;
        result
    }
}
