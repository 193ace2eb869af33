#!/usr/bin/env bash
# pulumi-vfio's batch interpreter. The local and the SSH host start it as
#     bash -c "<this file>" pulumi-vfio-batch <lock file>
# and keep it running for as long as the host object is in use; batch.ts (the Interpreter class) is the other end.
#
# Nothing from user input ever becomes shell text here: this program is a constant, and every value arrives on stdin
# as a field in which each byte outside [A-Za-z0-9_.:/@+,=-] is `\xHH`; fields are decoded with `printf %b` into a
# variable, never evaluated.
#
# Why bash and not sh: bash reports a failed write(2) with its strerror text ("write error: No such device"), which
# batch.ts maps back to the errno the kernel returned; dash only says "I/O error".
#
# The protocol, one line each, fields separated by one space:
#     batch <boundary> <stop>     a batch begins; <stop> 1: the first failed change skips the rest of the batch
#     <op> <flag> <path> <field>...
#                                 one operation (see the `case` at the end); <flag> is `-`, `optional` (its failure
#                                 never stops the batch), `expect` (a read guarding what follows, the last field the
#                                 answer it must give), `guard` (group-holders: a held group fails the op) or
#                                 `inplace` (put: an absent file is written where it belongs, see `put`)
#     exec <flag> - <argument>...
#                                 run a program (the path field is unused)
#     lock <seconds>              inside a batch: take the host lock (0: try once); without it the batch stops
#     end                         the batch ends
#     unlock                      outside any batch: drop the host lock; answered by nothing
# Each operation's output is followed by a trailer `\n<boundary> <index> <status> <message>\n`, the batch by
# `\n<boundary> end\n`. The boundary is 32 random hex characters per batch, so no file content can forge a trailer.
#
# Forks and small writes are what is slow on a busy or emulated host, so everything that can is a builtin: reads,
# lists, sysfs writes (their errors go to a file, not to a subshell), readlink of a link to a directory (`cd -P`;
# every sysfs link we read is one) and "who holds this VFIO group" when nobody does. Absent paths are answered
# without starting a program. Answers to reads are collected and sent in one write, before the next operation that
# may block (so each operation's time limit starts when it does) or at the batch's end.
#
# No program we start but flock(1) inherits fd 9, the host lock's (when there is no helper, see `helper`), nor the
# helper's pipes: a daemon started by an `exec` operation must never keep the host locked. Every program that may read stdin gets /dev/null instead: our stdin is
# the protocol.

set -u
shopt -s nullglob dotglob extglob
LOCK=$1
unset CDPATH
cd / || exit

# Batch state: the boundary, whether a failure stops the batch and has stopped it, the next operation's index, and
# the answers not sent yet.
BOUNDARY=-
STOP=0
SKIP=0
n=0
OUT=
# Set through decode (printf -v), which shellcheck does not follow.
mode=

# Builtins report their errors on stderr; fd 4 appends them to this per-interpreter file, read back by
# builtin_error (a dup costs less than an open, and far less than a subshell to capture them).
ERRFILE=${TMPDIR:-/tmp}/pulumi-vfio-batch.$$.err
trap '[ -e "$ERRFILE" ] && rm -f "$ERRFILE"' EXIT
# Files and directories we create get the narrowest mode unless the operation asks for one.
umask 077
# fd 3: our stdout, for the output of exec'd programs (their stderr is captured for the trailer's message).
exec 3>&1 4>>"$ERRFILE"

# trailer <status> [message]: end the current operation's answer. The message is one line.
trailer() {
  local m=${2-}
  m=${m//$'\n'/ | }
  printf -v m '\n%s %d %d %s\n' "$BOUNDARY" "$n" "$1" "$m"
  OUT+=$m
  n=$((n + 1))
}
# ok: `trailer 0` without printf's cost, for the common case.
ok() {
  OUT+=$'\n'"$BOUNDARY $n 0 "$'\n'
  n=$((n + 1))
}
flush() {
  [ -n "$OUT" ] && printf '%s' "$OUT"
  OUT=
}
# decode <variable> <field>
decode() { printf -v "$1" '%b' "$2"; }
# fail <status> <message>: a failed operation; in a stopping batch, a failure that is not optional skips the rest.
fail() {
  trailer "$1" "$2"
  if [ "$STOP" = 1 ] && [ "$flag" != optional ]; then SKIP=1; fi
}
# The last builtin error, in $e, without bash's "bash: line N: " prefix; the file is emptied for the next one.
builtin_error() {
  e=''
  IFS= read -r e <"$ERRFILE"
  : >"$ERRFILE"
  e=${e#*: line +([0-9]): }
}
# reply <answer>: the answer of a read. With flag `expect` it must equal the expectation (field 3), trailing newlines
# dropped, else the operation fails with status 4 (ESTALE) and stops a stopping batch.
reply() {
  if [ "$flag" != expect ]; then
    OUT+=$1
    ok
    return
  fi
  local want got=${1%%+($'\n')}
  decode want "${f[3]-}"
  if [[ $got == "$want" ]]; then
    OUT+=$1
    ok
  else
    fail 4 "found ${got:0:200}"
  fi
}
# absent <why>: a read found nothing (failed with $1); an expectation sees the empty answer.
absent() {
  if [ "$flag" = expect ]; then reply ''; else trailer 1 "$1"; fi
}

# The helper: one perl coprocess per interpreter, started at its first use, for the three system calls bash has no
# builtin for and a change needs: flock(2) (the host lock), rename(2) (put's replace) and unlink(2) (remove). With it
# a change starts no process at all; without perl (perl-base is Essential on Debian and Ubuntu, not everywhere) each
# of them costs one: flock(1), mv, rm. It holds the host lock on its own descriptor of the lock file, so the lock goes
# when it goes, and it goes when the interpreter does (its stdin closes); no program we start inherits its pipes
# (bash marks them close-on-exec). Requests and answers are one line: `lock <seconds>` → 0 (taken), T (timed out)
# or `E <why>`; `unlock` → 0; `rename <from> <to>` and `unlink <path>` → 0 or `E <strerror>`. Paths never hold
# a space or newline (batch.ts allows [A-Za-z0-9_@+,:=.-/] only). flock by number (LOCK_EX 2, LOCK_NB 4, LOCK_UN
# 8): loading Fcntl would double perl's start-up.
# shellcheck disable=SC2016 # perl code, not shell: its $ must reach perl unexpanded.
HELPER_PL='$| = 1; my ($p, $f) = @ARGV;
while (my $l = <STDIN>) {
  chomp $l; my ($c, $a, $b) = split / /, $l, 3;
  if ($c eq "lock") {
    if (!$f && !open($f, ">>", $p)) { undef $f; print "E $!\n"; next }
    my $ok = flock($f, 6);
    if (!$ok && $a > 0) { eval { local $SIG{ALRM} = sub { die "timeout\n" }; alarm $a; $ok = flock($f, 2); alarm 0 }; alarm 0 }
    print $ok ? "0\n" : "T\n";
  } elsif ($c eq "unlock") { flock($f, 8) if $f; print "0\n" }
  elsif ($c eq "rename") { print rename($a, $b) ? "0\n" : "E $!\n" }
  elsif ($c eq "unlink") { print unlink($a) || !(-e $a || -l $a) ? "0\n" : "E $!\n" }
}'
HAVE_PERL=0
hash perl 2>/dev/null && HAVE_PERL=1
# helper <request>: the helper's answer in $x; false without perl, so the caller starts the program instead. A
# helper that went away (killed on its own) took any lock it held with it: this interpreter can no longer tell
# whether it holds the lock, so it ends, and batch.ts starts a new one, which takes the lock again.
HELPER_STARTED=0
helper_gone() {
  printf '%s\n' "the lock helper (perl) went away, and the host lock it held for this interpreter with it" >&2
  exit 75
}
# Whether the helper holds the host lock for us now.
HELPER_LOCKED=0
# helper_alive: false once the helper is gone (or a zombie not reaped yet).
helper_alive() {
  local st=
  [ -n "${HELPER_PID-}" ] || return 1
  { IFS= read -r st <"/proc/$HELPER_PID/stat"; } 2>/dev/null || return 1
  st=${st##*) }
  [[ $st != [ZX]* ]]
}
helper() {
  [ "$HAVE_PERL" = 1 ] || return 1
  if [ "$HELPER_STARTED" = 0 ]; then
    coproc HELPER { exec perl -e "$HELPER_PL" "$LOCK" 2>/dev/null 3>&- 4>&- 9>&-; }
    HELPER_STARTED=1
  fi
  # bash forgets a coprocess it has reaped.
  [ -n "${HELPER_PID-}" ] || helper_gone
  x=
  printf '%s\n' "$1" >&"${HELPER[1]}"
  IFS= read -r x <&"${HELPER[0]}" || helper_gone
}

# holders <path>: the PIDs holding <path> open, one per line, in $held. A VFIO group can be open only once
# (drivers/vfio/group.c: a second open fails with EBUSY), so a group we can open and close again has no holder and
# costs no walk of /proc/*/fd.
holders() {
  held=
  [ -e "$1" ] || return 0
  if [[ $1 == /dev/vfio/+([0-9]) ]] && { exec 8<"$1"; } 2>/dev/null; then
    exec 8<&-
    return 0
  fi
  local x pid
  local -A seen
  x=$(find /proc/[0-9]*/fd -maxdepth 1 -lname "$1" 2>/dev/null </dev/null 9>&-)
  while IFS=/ read -r _ _ pid _; do
    if [ -n "$pid" ] && [ -z "${seen[$pid]-}" ]; then
      seen[$pid]=1
      held+=$pid$'\n'
    fi
  done <<<"$x"
}

while IFS=' ' read -r -a f; do
  [ ${#f[@]} -eq 0 ] && continue
  op=${f[0]}
  case $op in
    batch)
      # A helper killed on its own took our lock with it: end, rather than run this batch unlocked (see helper).
      if [ "$HELPER_LOCKED" = 1 ] && ! helper_alive; then helper_gone; fi
      BOUNDARY=${f[1]}
      STOP=${f[2]}
      SKIP=0
      n=0
      continue
      ;;
    end)
      OUT+=$'\n'"$BOUNDARY end"$'\n'
      flush
      continue
      ;;
    unlock)
      if [ "$HELPER_STARTED" = 1 ]; then helper unlock; fi
      HELPER_LOCKED=0
      exec 9>&-
      continue
      ;;
  esac
  [ "$SKIP" = 1 ] && continue
  flag=${f[1]-}
  p=${f[2]-}
  # Most paths have nothing to decode; skipping printf for them is measurable on big batches.
  [[ $p == *\\* ]] && decode p "$p"
  # Answers of reads wait in OUT; anything that may block sends them first, so the caller's clock moves on to it.
  case $op in read | readlink | list | stat) ;; *) flush ;; esac
  case $op in
    read)
      # The whole file, NUL-free as sysfs and config files are. A failure (ENOENT, EACCES, ENODEV of a sysfs
      # attribute) shows as an error of the builtin.
      x=''
      IFS= read -r -d '' x 2>&4 <"$p"
      if [ -s "$ERRFILE" ]; then
        builtin_error
        absent "$e"
      else
        reply "$x"
      fi
      ;;
    readlink)
      # Canonical and absolute. A link to a directory resolves with cd -P, no process; one to anything else (or
      # to nothing) costs readlink -m.
      if [ ! -L "$p" ]; then
        absent "not a link"
      elif cd -P -- "$p" 2>/dev/null; then
        x=$PWD
        cd / || exit
        reply "$x"
      elif x=$(readlink -m -- "$p" 2>/dev/null </dev/null 9>&-); then
        reply "$x"
      else
        absent "not a link"
      fi
      ;;
    list)
      # Sorted by the glob; dotglob includes hidden names, nullglob makes an empty directory an empty answer.
      if [ -d "$p" ]; then
        x=
        for e in "$p"/*; do x+=${e##*/}$'\n'; done
        reply "$x"
      else
        absent "No such file or directory"
      fi
      ;;
    stat)
      if [ ! -e "$p" ]; then
        trailer 1 "No such file or directory"
      elif x=$(stat -L -c '%F %a %u %g %s %t:%T' -- "$p" 2>&1 </dev/null 9>&-); then
        OUT+=$x
        trailer 0
      else
        trailer 1 "$x"
      fi
      ;;
    write)
      # One write(2) of the decoded data, as `echo > /sys/...` does; sysfs takes each write as one value.
      if printf '%b' "${f[3]-}" 2>&4 >"$p"; then
        ok
      else
        builtin_error
        fail 1 "$e"
      fi
      ;;
    put)
      # A temporary file in the same directory, then rename: readers never see half a file. Field 3 is the mode.
      # The builtin writes the temp file (the umask 077 makes a new one 0600, so a 0600 put, the journal's, needs no
      # chmod process); only the rename is a program.
      decode mode "${f[3]}"
      if [ "$flag" = inplace ] && [ ! -e "$p" ] && [ ! -L "$p" ] && [[ $mode == +([0-7]) ]]; then
        # Absent, and its readers take an empty file as absent (the binding journal): one write(2) where it belongs,
        # no temp file and no mv process. noclobber makes the open O_EXCL (a file that appeared meanwhile is not
        # overwritten); the umask gives the file exactly <mode>. A write cut short leaves an empty file, as good as none.
        printf -v um '%o' $((8#777 & ~8#$mode))
        umask "$um"
        set -o noclobber
        if printf '%b' "${f[4]-}" 2>&4 >"$p"; then
          ok
        else
          builtin_error
          fail 1 "$e"
        fi
        set +o noclobber
        umask 077
        continue
      fi
      tmp="$p.pulumi-vfio.$$"
      e=-
      if [ -e "$tmp" ]; then rm -f -- "$tmp" 9>&-; fi
      if ! printf '%b' "${f[4]-}" 2>&4 >"$tmp"; then
        builtin_error
      elif [ "$mode" != 600 ] && ! e=$(chmod "$mode" -- "$tmp" 2>&1 9>&-); then
        :
      elif helper "rename $tmp $p"; then
        e=${x#E }
        [ "$x" = 0 ] && e=-
      elif ! e=$(mv -f -- "$tmp" "$p" 2>&1 9>&-); then
        :
      else
        e=-
      fi
      if [ "$e" = - ]; then
        trailer 0
      else
        if [ -e "$tmp" ]; then rm -f -- "$tmp" 9>&-; fi
        fail 1 "$e"
      fi
      ;;
    mkdir)
      decode mode "${f[3]}"
      # shellcheck disable=SC2174 # -m is for the directory asked for; missing parents get 0700 from our umask.
      if [ -d "$p" ]; then
        trailer 0
      elif e=$(mkdir -p -m "$mode" -- "$p" 2>&1 </dev/null 9>&-); then
        trailer 0
      else
        fail 1 "$e"
      fi
      ;;
    remove)
      if [ ! -e "$p" ] && [ ! -L "$p" ]; then
        trailer 0
      elif helper "unlink $p"; then
        if [ "$x" = 0 ]; then trailer 0; else fail 1 "${x#E }"; fi
      elif e=$(rm -f -- "$p" 2>&1 9>&-); then
        trailer 0
      else
        fail 1 "$e"
      fi
      ;;
    openers)
      holders "$p"
      OUT+=$held
      ok
      ;;
    group-holders)
      # <path> is a sysfs device directory; its group's node is /dev/vfio/<N>. No group or no node: nobody.
      grp=
      held=
      if cd -P -- "$p/iommu_group" 2>/dev/null; then
        grp=/dev/vfio/${PWD##*/}
        cd / || exit
        holders "$grp"
      fi
      OUT+=$held
      if [ -n "$held" ] && [ "$flag" = guard ]; then
        fail 3 "$grp: Device or resource busy"
      else
        ok
      fi
      ;;
    exec)
      # Fields 3... are the argument vector (field 2 is unused). stdout goes straight to ours; stderr becomes the
      # trailer's message and the exit status its status.
      argv=()
      for v in "${f[@]:3}"; do
        decode x "$v"
        argv+=("$x")
      done
      e=$("${argv[@]}" 2>&1 >&3 3>&- </dev/null 9>&-)
      rc=$?
      if [ $rc -eq 0 ]; then trailer 0 "$e"; else fail $rc "$e"; fi
      ;;
    lock)
      # The host lock: flock(2) on the lock file, taken by the helper (no process) or else by flock(1) on fd 9 of
      # this process; held until `unlock` or until this process goes, even killed. The second field is the time
      # limit in seconds, 0: try once.
      #
      # Why the helper: without it, a create+delete of a binding started three processes (flock(1) here, mv for the
      # journal's put, rm for its removal), ~50 ms each on the emulated lab guest. `npm run bench` on an idle
      # machine: IommuBinding create+delete 1.7x the plain script locally and 1.65x over SSH without it, 1.26x and
      # 1.26x with it (README, Limits, Speed).
      secs=$flag
      [ -d /run/lock ] || mkdir -p /run/lock 9>&-
      why="timed out after $secs s waiting for $LOCK: another pulumi-vfio operation holds it"
      if helper "lock $secs"; then
        case $x in
          0)
            why=
            HELPER_LOCKED=1
            ;;
          T) ;;
          E*) why="cannot open $LOCK: ${x#E }" ;;
        esac
      elif ! { exec 9>>"$LOCK"; } 2>&4; then
        builtin_error
        why="cannot open $LOCK: $e"
      elif [ "$secs" = 0 ] && flock -n 9 </dev/null; then
        why=
      elif [ "$secs" != 0 ] && flock -w "$secs" 9 </dev/null; then
        why=
      else
        exec 9>&-
      fi
      # Without the lock, nothing after it in its batch runs.
      if [ -z "$why" ]; then
        trailer 0
      else
        trailer 1 "$why"
        SKIP=1
      fi
      ;;
    *) trailer 2 "unknown op $op" ;;
  esac
done
