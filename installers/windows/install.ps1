<#
.SYNOPSIS
  Installs (or removes) the storesync agent as a Windows service.

.DESCRIPTION
  Install: copies storesync-agent.exe to %ProgramFiles%\storesync, creates %ProgramData%\storesync (settings and
  data, readable by Administrators and SYSTEM only), writes a default agent.toml if there is none, enrols the till
  when -Hub and -Code are given, registers the service (automatic start, restart on failure) and starts it.
  Upgrade: run it again with the new .exe; the service is stopped (it commits and exits), the binary replaced, the
  service started. The data dir is never touched.
  Uninstall: -Uninstall stops and removes the service and the program; the data stays unless -PurgeData.

.EXAMPLE
  .\install.ps1 -Exe .\storesync-agent.exe -Hub https://hub.example.com:8080 -Code ABCD-EFGH-JKLM-NPQR -CaCert .\ca.pem
.EXAMPLE
  .\install.ps1 -Uninstall
#>
[CmdletBinding()]
param(
    [string]$Exe = (Join-Path $PSScriptRoot 'storesync-agent.exe'),
    [string]$Hub,
    [string]$Code,
    [string]$CaCert,
    [switch]$Uninstall,
    [switch]$PurgeData
)
$ErrorActionPreference = 'Stop'
$program = Join-Path $env:ProgramFiles 'storesync'
$data = Join-Path $env:ProgramData 'storesync'
$target = Join-Path $program 'storesync-agent.exe'

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw 'Run this script as Administrator.'
}

function Invoke-Agent([string[]]$Arguments) {
    & $target @Arguments
    if ($LASTEXITCODE -ne 0) { throw "storesync-agent $($Arguments -join ' ') failed with exit code $LASTEXITCODE" }
}

$service = Get-Service -Name 'storesync-agent' -ErrorAction SilentlyContinue

if ($Uninstall) {
    if ($service) { Invoke-Agent @('service', 'uninstall') }
    if (Test-Path $program) { Remove-Item -Recurse -Force $program }
    if ($PurgeData) {
        Remove-Item -Recurse -Force $data
        Write-Host "Removed $data (journal, cache and credential)."
    } else {
        Write-Host "Kept $data. Delete it by hand once the hub holds every sale (storesync-agent --service status)."
    }
    return
}

if (-not (Test-Path $Exe)) { throw "No agent executable at $Exe (pass -Exe)." }

if ($service -and $service.Status -ne 'Stopped') {
    # A stop drains in-flight requests and commits, as ctrl-c does.
    Stop-Service -Name 'storesync-agent'
    (Get-Service -Name 'storesync-agent').WaitForStatus('Stopped', [TimeSpan]::FromSeconds(60))
}

New-Item -ItemType Directory -Force -Path $program | Out-Null
if (Test-Path $target) { Copy-Item -Force $target "$target.previous" }   # kept for a rollback
Copy-Item -Force $Exe $target

New-Item -ItemType Directory -Force -Path (Join-Path $data 'data') | Out-Null
# Settings and data: Administrators and SYSTEM only, no inherited access.
& icacls $data /inheritance:r /grant:r '*S-1-5-32-544:(OI)(CI)F' '*S-1-5-18:(OI)(CI)F' | Out-Null
$config = Join-Path $data 'agent.toml'
if (-not (Test-Path $config)) {
    @(
        '# storesync-agent settings (service). Every key is optional; see docs/OPERATIONS.md.',
        '# listen = "127.0.0.1:7171"',
        '# upload_batch_events = 1000',
        '# hub_request_timeout_s = 30'
    ) | Set-Content -Encoding UTF8 $config
}

if ($Hub -and $Code) {
    $enroll = @('--service', 'enroll', '--hub', $Hub, '--code', $Code)
    if ($CaCert) { $enroll += @('--ca-cert', $CaCert) }
    Invoke-Agent $enroll
}

if (-not $service) { Invoke-Agent @('--config', $config, 'service', 'install') }
Start-Service -Name 'storesync-agent'
Invoke-Agent @('--service', 'paths')
Write-Host 'storesync-agent is running: http://127.0.0.1:7171/v1/status'
