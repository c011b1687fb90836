# shellcheck shell=bash
(
set +e +u; set +o pipefail 2>/dev/null
T=""; command -v timeout >/dev/null 2>&1 && T="timeout 20"
if command -v nvidia-smi >/dev/null 2>&1; then
  out=$($T nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1) && rc=0 || rc=$?
  printf '== gpu.query rc=%s ==\n%s\n' "$rc" "$out"
  case $out in *"not a valid field"*)
    out=$($T nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) && rc=0 || rc=$?
    printf '== gpu.query-nocc rc=%s ==\n%s\n' "$rc" "$out";;
  esac
  if [ "$rc" != 124 ]; then
    out=$($T nvidia-smi 2>&1) && rc=0 || rc=$?
    printf '== gpu.smi rc=%s ==\n%s\n' "$rc" "$(printf '%s\n' "$out" | head -n 6)"
  fi
else
  printf '== gpu.query rc=127 ==\nnvidia-smi: command not found\n'
fi
seen=" "
for d in /usr/local/cuda /usr/local/cuda-*; do
  [ -d "$d" ] || continue
  r=$(readlink -f "$d" 2>/dev/null) || r=$d
  case $seen in *" $r "*) continue;; esac
  seen="$seen$r "
  if [ -f "$r/version.json" ]; then
    printf '== gpu.toolkit-json path=%s ==\n' "$r"; cat "$r/version.json"; echo
  elif [ -f "$r/version.txt" ]; then
    printf '== gpu.toolkit-txt path=%s ==\n' "$r"; cat "$r/version.txt"; echo
  elif [ -x "$r/bin/nvcc" ]; then
    out=$("$r/bin/nvcc" --version 2>&1) && rc=0 || rc=$?
    printf '== gpu.nvcc rc=%s path=%s ==\n%s\n' "$rc" "$r/bin/nvcc" "$out"
  fi
done
n=$(command -v nvcc 2>/dev/null)
r=$(readlink -f "$n" 2>/dev/null) || r=$n
case $seen in *" ${r%/bin/nvcc} "*) n="";; esac
if [ -n "$n" ]; then
  out=$("$n" --version 2>&1) && rc=0 || rc=$?
  printf '== gpu.nvcc rc=%s path=%s ==\n%s\n' "$rc" "$n" "$out"
fi
if { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q 'libcuda\.so\.1 '; then
  printf '== gpu.libcuda ==\nyes\n'
else
  printf '== gpu.libcuda ==\nno\n'
fi
if [ -d /sys/bus/pci/devices ]; then
  printf '== gpu.pci ==\n'
  for d in /sys/bus/pci/devices/*; do
    read -r v < "$d/vendor" 2>/dev/null || continue
    [ "$v" = 0x10de ] || continue
    read -r c < "$d/class"; read -r i < "$d/device"
    case $c in 0x0300*|0x0302*) printf '%s %s %s\n' "${d##*/}" "$i" "$c";; esac
  done
else
  printf '== gpu.pci state=unavailable ==\n'
fi
) 2>/dev/null </dev/null
true
