# One entry point for people and CI on Windows (PowerShell 5.1+ or PowerShell 7): the same commands as run.sh.
#   .\run.ps1 [--data PATH]   the main job: the whole pipeline on real data (import -> ... -> predict)
#   .\run.ps1 test            the test suite (what CI runs)
#   .\run.ps1 lint            ruff
#   .\run.ps1 <command> ...   any brainmri command, e.g. .\run.ps1 serve bundles\cpu-fast
# Creates .venv on first use and (re)installs when pyproject.toml changes.
# Not exercised by this project's CI (no Windows runner): see docs/serve.md.
$ErrorActionPreference = "Stop"
Set-Location -Path $PSScriptRoot

$Py = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$Venv = ".venv"
$VenvPy = Join-Path $Venv "Scripts\python.exe"
if (-not (Test-Path $VenvPy)) { $VenvPy = Join-Path $Venv "bin/python" }  # PowerShell on Linux/macOS
$Hash = (Get-FileHash -Algorithm SHA256 pyproject.toml).Hash.Substring(0, 16).ToLower()
$Stamp = Join-Path $Venv ".installed-$Hash"

if (-not (Test-Path $VenvPy)) {
    Write-Host "[run.ps1] creating $Venv"
    & $Py -m venv $Venv
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    $VenvPy = Join-Path $Venv "Scripts\python.exe"
    if (-not (Test-Path $VenvPy)) { $VenvPy = Join-Path $Venv "bin/python" }
}
if (-not (Test-Path $Stamp)) {
    Write-Host "[run.ps1] installing dependencies into $Venv (first run takes a few minutes)"
    & $VenvPy -m pip install -q --upgrade pip | Out-Null
    # torch first, pinned: the releases run.sh installs
    & $VenvPy -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    & $VenvPy -m pip install -q -e ".[train,serve,dev,download]"
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    Get-ChildItem -Path $Venv -Filter ".installed-*" -Force | Remove-Item -Force
    New-Item -ItemType File -Path $Stamp | Out-Null
}
$Bin = Split-Path -Parent $VenvPy
$env:PATH = "$((Resolve-Path $Bin).Path)$([IO.Path]::PathSeparator)$env:PATH"

$Cmd = if ($args.Count -gt 0) { $args[0] } else { "" }
$Rest = if ($args.Count -gt 1) { $args[1..($args.Count - 1)] } else { @() }
switch -Regex ($Cmd) {
    "^test$" { & $VenvPy -m pytest @Rest; exit $LASTEXITCODE }
    "^lint$" { & $VenvPy -m ruff check src tests bench @Rest; exit $LASTEXITCODE }
    "^(-.*)?$" {
        # no command (or only options such as --data PATH): the main job with the CPU recipe
        & $VenvPy -m brainmri.cli pipeline --config configs/cpu-fast.yaml @args; exit $LASTEXITCODE
    }
    default { & $VenvPy -m brainmri.cli @args; exit $LASTEXITCODE }
}
