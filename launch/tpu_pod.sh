#!/usr/bin/env bash
# Runs medclr pretraining on a Cloud TPU VM pod slice (docs/pods.md).
#
#   launch/tpu_pod.sh [--dry-run] SUBCOMMAND --name=NAME --zone=ZONE [options]
#
# Subcommands (gcloud flags as in https://cloud.google.com/tpu/docs/jax-pods):
#   create    gcloud compute tpus tpu-vm create; needs --accelerator-type and
#             --version; --spot or --preemptible
#   install   on every worker: Python >= 3.11 venv, the repository (--repo:
#             a git URL to clone, or a local checkout to copy), then
#             pip install -e '.[tpu]'
#   pretrain  python -m launch.pretrain --config=... --workdir=... on every
#             worker at once (--worker=all): one JAX process per host
#   resume    the same command again: medclr resumes from the workdir's
#             latest checkpoint (a preempted spot slice, or more steps)
#   delete    gcloud compute tpus tpu-vm delete
#
# --dry-run (or DRY_RUN=1) prints every command instead of running it.
# Arguments after `--` are passed on to launch.pretrain (config overrides).
set -euo pipefail

readonly PROG="launch/tpu_pod.sh"
readonly REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where install puts things on each worker (relative to the login's home).
readonly REMOTE_REPO="medclr"
readonly REMOTE_VENV="medclr-venv"

usage() {
  cat <<EOF
usage: $PROG [--dry-run] SUBCOMMAND --name=NAME --zone=ZONE [--project=P] [options]

  create    --accelerator-type=TYPE (e.g. v5litepod-16, v4-32)
            --version=RUNTIME (e.g. v2-alpha-tpuv5-lite, tpu-ubuntu2204-base)
            [--spot | --preemptible]
  install   --repo=GIT_URL_OR_LOCAL_CHECKOUT [--ref=REF] [--python=python3.11]
  pretrain  --config=FILE[:ARG] --workdir=gs://BUCKET/PATH [--detach] [-- OVERRIDES...]
  resume    same arguments as pretrain (resumes from the latest checkpoint)
  delete

--dry-run or DRY_RUN=1 prints the commands instead of running them.
EOF
}

die() {  # a usage error: one line naming the argument, then the usage
  echo "$PROG: error: $*" >&2
  usage >&2
  exit 2
}

# Prints a command so it can be pasted back into a shell: plain words as
# they are, anything else in single quotes. (No ${word@Q}: macOS ships
# bash 3.2, and gcloud is often run from a laptop.)
show() {
  local line="+" word quote="'\\''"
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      line+=" $word"
    else
      line+=" '${word//\'/$quote}'"
    fi
  done
  echo "$line"
}

run() {
  show "$@"
  if [[ "$DRY_RUN" != 1 ]]; then
    "$@"
  fi
}

# ------------------------------------------------------------------ parsing

DRY_RUN="${DRY_RUN:-0}"
SUBCOMMAND=""
NAME="" ZONE="" PROJECT="" ACCELERATOR_TYPE="" VERSION="" PROVISIONING=""
REPO="" REF="" PYTHON="python3.11" CONFIG="" WORKDIR="" DETACH=0
PASSTHROUGH=()

parse_args() {
  [[ $# -gt 0 ]] || die "missing SUBCOMMAND"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      -h|--help) usage; exit 0 ;;
      --name=*) NAME="${1#*=}" ;;
      --zone=*) ZONE="${1#*=}" ;;
      --project=*) PROJECT="${1#*=}" ;;
      --accelerator-type=*) ACCELERATOR_TYPE="${1#*=}" ;;
      --version=*) VERSION="${1#*=}" ;;
      --spot|--preemptible)
        [[ -z "$PROVISIONING" || "$PROVISIONING" == "$1" ]] \
          || die "--spot and --preemptible exclude each other"
        PROVISIONING="$1" ;;
      --repo=*) REPO="${1#*=}" ;;
      --ref=*) REF="${1#*=}" ;;
      --python=*) PYTHON="${1#*=}" ;;
      --config=*) CONFIG="${1#*=}" ;;
      --workdir=*) WORKDIR="${1#*=}" ;;
      --detach) DETACH=1 ;;
      --) shift; PASSTHROUGH=("$@"); break ;;
      create|install|pretrain|resume|delete)
        [[ -z "$SUBCOMMAND" ]] || die "two subcommands: $SUBCOMMAND and $1"
        SUBCOMMAND="$1" ;;
      --*=*) die "unknown option ${1%%=*}" ;;
      --name|--zone|--project|--accelerator-type|--version|--repo|--ref|\
      --python|--config|--workdir)
        die "$1 needs a value: $1=VALUE" ;;
      -*) die "unknown option $1" ;;
      *) die "unknown subcommand '$1' (create, install, pretrain, resume, delete)" ;;
    esac
    shift
  done
  [[ -n "$SUBCOMMAND" ]] || die "missing SUBCOMMAND (create, install, pretrain, resume, delete)"
}

require() {  # require FLAG VALUE: a missing value names the flag
  [[ -n "$2" ]] || die "$SUBCOMMAND needs $1"
}

only_for() {  # only_for SUBCOMMANDS... : options that make no sense elsewhere
  local allowed=" $* "
  [[ -z "$ACCELERATOR_TYPE$VERSION$PROVISIONING" || "$allowed" == *" create "* ]] \
    || die "--accelerator-type/--version/--spot/--preemptible are for create only"
  [[ -z "$REPO$REF" || "$allowed" == *" install "* ]] \
    || die "--repo/--ref are for install only"
  [[ -z "$CONFIG$WORKDIR" && "$DETACH" == 0 && ${#PASSTHROUGH[@]} -eq 0 \
     || "$allowed" == *" pretrain "* ]] \
    || die "--config/--workdir/--detach/-- are for pretrain and resume only"
}

check_common() {
  require --name "$NAME"
  require --zone "$ZONE"
  [[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || die "--name=$NAME: lowercase letters, digits and hyphens, starting with a letter"
  [[ "$ZONE" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] \
    || die "--zone=$ZONE: expected a zone such as us-central2-b or europe-west4-a"
}

check_pretrain() {
  require --config "$CONFIG"
  require --workdir "$WORKDIR"
  local file="${CONFIG%%:*}"
  [[ -f "$REPO_ROOT/$file" ]] \
    || die "--config=$CONFIG: $file is not a file of the repository (paths are relative to its root)"
  # Every host writes its checkpoint shards and reads the others' metadata:
  # the workdir must be storage all workers share, not a worker's own disk.
  [[ "$WORKDIR" =~ ^gs://[a-z0-9][-a-z0-9_.]*[a-z0-9](/.*)?$ ]] \
    || die "--workdir=$WORKDIR: must be gs://BUCKET/PATH (shared by all workers)"
}

# ------------------------------------------------------------------ commands

gcloud_common() {  # the flags every gcloud tpu-vm command of this slice takes
  GCLOUD_FLAGS=(--zone="$ZONE")
  [[ -z "$PROJECT" ]] || GCLOUD_FLAGS+=(--project="$PROJECT")
}

on_all_workers() {  # runs one shell command on every worker, all at once
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" \
    --worker=all --command="$1"
}

do_create() {
  require --accelerator-type "$ACCELERATOR_TYPE"
  require --version "$VERSION"
  [[ "$ACCELERATOR_TYPE" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] \
    || die "--accelerator-type=$ACCELERATOR_TYPE: expected e.g. v5litepod-16, v4-32, v5p-8"
  local extra=()
  [[ -z "$PROVISIONING" ]] || extra+=("$PROVISIONING")
  run gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_FLAGS[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION" \
    ${extra[@]+"${extra[@]}"}
}

# Shell text that (re)creates the venv with a Python medclr supports: the
# TPU runtime images are Ubuntu 22.04, whose python3 is 3.10.
remote_venv_setup() {
  local py
  py="$(printf '%q' "$PYTHON")"
  printf '%s' "{ command -v $py >/dev/null || { sudo apt-get update -q && sudo apt-get install -y -q $py $py-venv; }; }" \
    " && $py -m venv ~/$REMOTE_VENV" \
    " && ~/$REMOTE_VENV/bin/pip install -q -U pip" \
    " && cd ~/$REMOTE_REPO && ~/$REMOTE_VENV/bin/pip install -q -e '.[tpu]'"
}

do_install() {
  require --repo "$REPO"
  local fetch
  if [[ "$REPO" =~ ^(https://|ssh://|git@) ]]; then
    local url ref
    url="$(printf '%q' "$REPO")"
    ref="$(printf '%q' "$REF")"
    fetch="{ [ -d ~/$REMOTE_REPO/.git ] || git clone -q $url ~/$REMOTE_REPO; }"
    if [[ -n "$REF" ]]; then
      fetch+=" && git -C ~/$REMOTE_REPO fetch -q origin && git -C ~/$REMOTE_REPO checkout -q $ref"
    else
      fetch+=" && git -C ~/$REMOTE_REPO pull -q --ff-only"
    fi
  else
    [[ -d "$REPO/.git" || -f "$REPO/.git" ]] \
      || die "--repo=$REPO: not a git URL (https://, ssh://, git@) nor a local git checkout"
    # Committed files only (git archive): what was tested, not stray edits.
    local archive="/tmp/medclr-src-$$.tar.gz"
    run git -C "$REPO" archive --format=tar.gz -o "$archive" "${REF:-HEAD}"
    run gcloud compute tpus tpu-vm scp "$archive" "$NAME:medclr-src.tar.gz" \
      "${GCLOUD_FLAGS[@]}" --worker=all
    fetch="rm -rf ~/$REMOTE_REPO && mkdir -p ~/$REMOTE_REPO"
    fetch+=" && tar -xzf ~/medclr-src.tar.gz -C ~/$REMOTE_REPO"
  fi
  on_all_workers "$fetch && $(remote_venv_setup)"
}

# The launcher command each worker runs; identical for pretrain and resume.
# Values are quoted for the remote shell; `~` is left for it to expand.
pretrain_command() {
  # ${a[@]+"${a[@]}"}: an empty array under `set -u` in bash 3.2.
  local words=(-m launch.pretrain "--config=$CONFIG" "--workdir=$WORKDIR"
               ${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"})
  # MEDCLR_DISTRIBUTED=auto: every worker joins one jax.distributed job
  # (JAX reads the pod from the TPU VM's metadata server).
  local launch="MEDCLR_DISTRIBUTED=auto ~/$REMOTE_VENV/bin/python" word
  for word in "${words[@]}"; do
    launch+=" $(printf '%q' "$word")"
  done
  if [[ "$DETACH" == 1 ]]; then
    # Survives the ssh session; each worker keeps its own log.
    launch="nohup $launch > ~/medclr-pretrain.log 2>&1 < /dev/null &"
  fi
  printf '%s' "cd ~/$REMOTE_REPO && $launch"
}

do_pretrain() {
  check_pretrain
  on_all_workers "$(pretrain_command)"
}

do_delete() {
  run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}" --quiet
}

main() {
  parse_args "$@"
  case "$SUBCOMMAND" in
    create) only_for create ;;
    install) only_for install ;;
    pretrain|resume) only_for pretrain ;;
    delete) only_for delete ;;
  esac
  check_common
  gcloud_common
  case "$SUBCOMMAND" in
    create) do_create ;;
    install) do_install ;;
    pretrain|resume) do_pretrain ;;
    delete) do_delete ;;
  esac
}

main "$@"
