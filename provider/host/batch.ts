/**
 * The batch interpreter shared by the local and the SSH host: one constant bash program that reads operations
 * from stdin and answers each with its output followed by a trailer line. Nothing from user input ever becomes
 * shell text: the program is a constant, and every field travels on stdin as `\xHH`-escaped data that the
 * program decodes with `printf %b` into a variable.
 *
 * Why bash and not sh: bash reports a failed write(2) with its strerror text ("write error: No such device"),
 * which we map back to the errno the kernel returned; dash only says "I/O error".
 */
import { AsyncLocalStorage } from "async_hooks";
import { randomBytes } from "crypto";
import { StringDecoder } from "string_decoder";
import { LOCK_PATH } from "./lock";
import { Op, OpResult, RunOptions, assertSafePath, defaultTimeout, errnoFromMessage, isGuardRead, isMutation } from "./types";

/**
 * The interpreter runs for as long as its host object is in use and executes any number of batches, one after the
 * other. A batch on stdin is `B <boundary> <stop>`, one line per operation, then `E`. Each operation's output is
 * followed by a trailer `\n<boundary> <index> <status> <message>\n`; the batch's end by `\n<boundary> E\n`. The
 * boundary is 32 random hex characters per batch, so no file content can forge one. With `<stop>` = 1 the first
 * failed change makes the interpreter skip the batch's remaining operations (they get no trailer).
 *
 * `K <seconds>` takes the host-wide lock (flock(2); 0 seconds means try once) and `U`, a line outside any batch that
 * gets no answer, drops it. Taking it costs no process: a small perl helper, started with the first `K` (perl-base is
 * Essential on Debian and Ubuntu), holds the lock for the interpreter and exits, dropping it, when the interpreter
 * goes (its stdin closes; a kill of the interpreter's process group takes it too). On a host without perl, util-linux
 * flock(1) locks fd 9 of the interpreter itself, one process per `K`. No external program inherits the helper's
 * pipes or fd 9: a daemon started by an `exec` operation must never keep the host locked.
 *
 * Forks and small writes are what is slow on a busy or emulated host. Everything that can is a bash builtin: reads,
 * lists, sysfs writes (their errors go to a per-interpreter file, not a subshell), readlink of a link to a directory
 * (`cd -P`; every sysfs link we read is one), and "who holds this VFIO group" when nobody does. Absent paths are
 * answered without starting a program. Answers to reads are collected and sent in one write, before the next
 * operation that may block (so each time limit still starts when its operation does) or at the batch's end.
 */
export const BATCH_SCRIPT = String.raw`
set -u
shopt -s nullglob dotglob extglob
unset CDPATH; cd /
B=-; STOP=0; SKIP=0; n=0; OUT=
EF=\${TMPDIR:-/tmp}/pulumi-vfio-batch.$$.err; trap '[ -e "$EF" ] && rm -f "$EF"' EXIT
umask 077
# fd 3: our stdout, for exec'd programs. fd 4: errors of builtins, appended to $EF (a dup costs less than an open).
exec 3>&1 4>>"$EF"
t() { local m=\${2-}; m=\${m//$'\n'/ | }; printf -v m '\n%s %d %d %s\n' "$B" "$n" "$1" "$m"; OUT+=$m; n=$((n+1)); }
ok() { OUT+=$'\n'"$B $n 0 "$'\n'; n=$((n+1)); }
flush() { [ -n "$OUT" ] && printf '%s' "$OUT"; OUT=; }
d() { printf -v "$1" '%b' "$2"; }
fail() { t "$1" "$2"; if [ "$STOP" = 1 ] && [ "$3" != o ]; then SKIP=1; fi; }
err() { e=''; IFS= read -r e < "$EF"; : > "$EF"; e=\${e#*: line +([0-9]): }; }
# The answer $1 of a read. With an expectation (opt e, field 3) it must equal it, trailing newlines dropped, else the
# op fails with 4 (ESTALE) and stops a stopping batch. none: the read failed with $1; an expectation sees "".
want() {
  if [ "$opt" != e ]; then OUT+=$1; ok; return; fi
  local w a=\${1%%+($'\n')}; d w "\${f[3]-}"
  if [[ $a == "$w" ]]; then OUT+=$1; ok; else fail 4 "found \${a:0:200}" -; fi
}
none() { if [ "$opt" = e ]; then want ''; else t 1 "$1"; fi; }
# The lock helper (see the K op): answers "K <secs>" with 0 (taken), T (timed out) or "E <why>", and "U" with nothing.
# flock(2) by number (LOCK_SH 1, LOCK_EX 2, LOCK_NB 4, LOCK_UN 8): loading Fcntl would double perl's start-up.
LOCKD_PL='$| = 1; my ($p, $f) = @ARGV;
while (my $l = <STDIN>) {
  if ($l =~ /^K (\d+)/) {
    my $t = $1;
    if (!$f && !open($f, ">>", $p)) { undef $f; print "E $!\n"; next }
    my $ok = flock($f, 6);
    if (!$ok && $t > 0) { eval { local $SIG{ALRM} = sub { die "timeout\n" }; alarm $t; $ok = flock($f, 2); alarm 0 }; alarm 0 }
    print $ok ? "0\n" : "T\n";
  } elsif ($l =~ /^U/) { flock($f, 8) if $f }
}'
PERL=; hash perl 2>/dev/null && PERL=perl
lockd() {
  [ -n "\${LOCKD[1]-}" ] && return 0
  [ -n "$PERL" ] || return 1
  coproc LOCKD { exec perl -e "$LOCKD_PL" ${LOCK_PATH} 2>/dev/null 3>&- 4>&- 9>&-; }
}
# PIDs holding $1 open, one per line, in $held. A VFIO group can be open only once (drivers/vfio/group.c: a second
# open fails with EBUSY), so a group we can open and close again has no holder and costs no walk of /proc/*/fd.
holders() {
  held=
  [ -e "$1" ] || return 0
  if [[ $1 == /dev/vfio/+([0-9]) ]] && { exec 8<"$1"; } 2>/dev/null; then exec 8<&-; return 0; fi
  local x pid; local -A seen
  x=$(find /proc/[0-9]*/fd -maxdepth 1 -lname "$1" 2>/dev/null </dev/null 9>&-)
  while IFS=/ read -r _ _ pid _; do [ -n "$pid" ] && [ -z "\${seen[$pid]-}" ] && { seen[$pid]=1; held+=$pid$'\n'; }; done <<< "$x"
}
while IFS=' ' read -r -a f; do
  [ \${#f[@]} -eq 0 ] && continue
  op=\${f[0]}
  case $op in
  B) B=\${f[1]}; STOP=\${f[2]}; SKIP=0; n=0; continue ;;
  E) OUT+=$'\n'"$B E"$'\n'; flush; continue ;;
  U) [ -n "\${LOCKD[1]-}" ] && printf 'U\n' >&"\${LOCKD[1]}"; exec 9>&-; continue ;;
  esac
  [ $SKIP = 1 ] && continue
  opt=\${f[1]-}; p=\${f[2]-}
  [[ $p == *\\* ]] && d p "$p"
  # Answers of reads wait in OUT; anything that may block first sends them, so the caller's clock moves to it.
  case $op in r|l|d|s) ;; *) flush ;; esac
  case $op in
  r) x=''; IFS= read -r -d '' x 2>&4 < "$p"
     if [ -s "$EF" ]; then err; none "$e"; else want "$x"; fi ;;
  l) if [ ! -L "$p" ]; then none "not a link"
     elif cd -P -- "$p" 2>/dev/null; then x=$PWD; cd /; want "$x"
     elif x=$(readlink -m -- "$p" 2>/dev/null </dev/null 9>&-); then want "$x"; else none "not a link"; fi ;;
  d) if [ -d "$p" ]; then x=; for e in "$p"/*; do x+=\${e##*/}$'\n'; done; want "$x"; else none "No such file or directory"; fi ;;
  s) if [ ! -e "$p" ]; then t 1 "No such file or directory"
     elif x=$(stat -L -c '%F %a %u %g %s %t:%T' -- "$p" 2>&1 </dev/null 9>&-); then OUT+=$x; t 0; else t 1 "$x"; fi ;;
  w) if printf '%b' "\${f[3]-}" 2>&4 > "$p"; then ok; else err; fail 1 "$e" "$opt"; fi ;;
  # The temp file is written by the builtin (umask 077 makes a new one 0600, so a 0600 put needs no chmod process).
  p) d m "\${f[3]}"; tmp="$p.pulumi-vfio.$$"; e=-; [ -e "$tmp" ] && rm -f -- "$tmp" 9>&-
     if ! printf '%b' "\${f[4]-}" 2>&4 > "$tmp"; then err
     elif [ "$m" != 600 ] && ! e=$(chmod "$m" -- "$tmp" 2>&1 </dev/null 9>&-); then :
     elif ! e=$(mv -f -- "$tmp" "$p" 2>&1 </dev/null 9>&-); then :
     else e=-; fi
     if [ "$e" = - ]; then t 0; else [ -e "$tmp" ] && rm -f -- "$tmp" 9>&-; fail 1 "$e" "$opt"; fi ;;
  m) d m "\${f[3]}"; if [ -d "$p" ]; then t 0
     elif e=$(mkdir -p -m "$m" -- "$p" 2>&1 </dev/null 9>&-); then t 0; else fail 1 "$e" "$opt"; fi ;;
  u) if [ ! -e "$p" ] && [ ! -L "$p" ]; then t 0
     elif e=$(rm -f -- "$p" 2>&1 </dev/null 9>&-); then t 0; else fail 1 "$e" "$opt"; fi ;;
  o) holders "$p"; OUT+=$held; ok ;;
  g) grp=; held=
     if cd -P -- "$p/iommu_group" 2>/dev/null; then grp=/dev/vfio/\${PWD##*/}; cd /; holders "$grp"; fi
     OUT+=$held
     if [ -n "$held" ] && [ "$opt" = g ]; then fail 3 "$grp: Device or resource busy" -; else ok; fi ;;
  x) a=(); for v in "\${f[@]:3}"; do d x "$v"; a+=("$x"); done
     e=$("\${a[@]}" 2>&1 >&3 3>&- </dev/null 9>&-); rc=$?
     if [ $rc -eq 0 ]; then t 0 "$e"; else fail $rc "$e" "$opt"; fi ;;
  K) [ -d /run/lock ] || mkdir -p /run/lock 9>&-
     kr="timed out after $opt s waiting for ${LOCK_PATH}: another pulumi-vfio operation holds it"
     if lockd; then
       printf 'K %s\n' "$opt" >&"\${LOCKD[1]}"; x=; IFS= read -r x <&"\${LOCKD[0]}"
       case $x in 0) kr= ;; T) ;; E*) kr="cannot open ${LOCK_PATH}: \${x#E }" ;; *) kr="the lock helper (perl) went away" ;; esac
     elif ! { exec 9>>${LOCK_PATH}; } 2>&4; then err; kr="cannot open ${LOCK_PATH}: $e"
     elif [ "$opt" = 0 ] && flock -n 9 </dev/null; then kr=
     elif [ "$opt" != 0 ] && flock -w "$opt" 9 </dev/null; then kr=
     else exec 9>&-; fi
     # Without the lock, nothing after it in its batch runs.
     if [ -z "$kr" ]; then t 0; else t 1 "$kr"; SKIP=1; fi ;;
  *) t 2 "unknown op $op" ;;
  esac
done
`.replace(/\\\$/g, "$");

const OP_CODE: Record<Op["op"], string> = {
    read: "r",
    readlink: "l",
    list: "d",
    stat: "s",
    write: "w",
    put: "p",
    mkdir: "m",
    remove: "u",
    openers: "o",
    groupHolders: "g",
    exec: "x",
};

/** Every byte outside a small safe set becomes `\xHH`, so a field never contains a space, newline or backslash. */
export function encodeField(value: string): string {
    let out = "";
    for (const byte of Buffer.from(value, "utf8")) {
        const c = String.fromCharCode(byte);
        out += /[A-Za-z0-9_.:\/@+,=-]/.test(c) ? c : "\\x" + byte.toString(16).padStart(2, "0");
    }
    return out;
}

function field(value: string): string {
    // An empty field would collapse in `read -a`; `\c` is printf %b's "produce no further output".
    return value === "" ? "\\c" : encodeField(value);
}

/** The stdin line for one operation. */
export function encodeOp(op: Op): string {
    const opt = "optional" in op && op.optional ? "o" : op.op === "groupHolders" && op.guard ? "g" : isGuardRead(op) ? "e" : "-";
    const code = OP_CODE[op.op];
    if (op.op === "exec") {
        if (op.argv.length === 0) throw new Error("exec needs a program");
        return [code, opt, "-", ...op.argv.map(field)].join(" ");
    }
    assertSafePath(op.path);
    const parts = [code, opt, field(op.path)];
    if (op.op === "write") parts.push(field(op.data));
    if (op.op === "put") parts.push(field(op.mode.toString(8)), field(op.data));
    if (op.op === "mkdir") parts.push(field(op.mode.toString(8)));
    if (isGuardRead(op)) parts.push(field(op.expect));
    return parts.join(" ");
}

/** One running interpreter process, as the local or SSH host started it. */
export interface InterpreterProcess {
    /** Append to the interpreter's stdin. */
    write(input: string): void;
    onData(cb: (chunk: Buffer) => void): void;
    /** Called once when the process has gone (with an error when it did not end normally). */
    onExit(cb: (err?: Error) => void): void;
    /** Kill it and stop listening; a write stuck in the kernel stays stuck, abandoned. */
    abandon(): void;
    /** Close stdin: the interpreter exits after its current operation. */
    end(): void;
    /** Whatever the process wrote on stderr, for errors. */
    stderr(): string;
    /** Whether this process may keep Node's event loop alive: true while a batch runs, false while idle, so a
     *  program whose work is done exits even though its hosts are still open. */
    keepAlive(active: boolean): void;
}

export function newBoundary(): string {
    return randomBytes(16).toString("hex");
}

/** A batch as sent: its ops (for results, time limits and messages) and the stdin lines that encode them. The lock
 *  lines `K`/`U` are the interpreter's own and have no {@link Op}; a stand-in op carries their limit. */
type Line = { ops: Op[]; lines: string[] };

/**
 * Drives one long-lived interpreter process: batches are queued and run one at a time over the same process, which
 * is started on first use and again after it was abandoned (an operation over its time limit) or went away. The
 * host-wide lock is held by the interpreter (its helper); a locked section takes it with its first batch, in the same
 * round trip. When a new process has to be started while the lock is held, it tries once to take it again (a process
 * abandoned in the middle of a kernel write may still hold it, which is as good).
 */
export class Interpreter {
    private proc?: InterpreterProcess;
    private starting?: Promise<InterpreterProcess>;
    private tail: Promise<unknown> = Promise.resolve();
    /** Whether the current process holds the flock. */
    private held = false;
    /** The running locked section's token (see `run`), and the lock's time limit while it has not taken it yet. */
    private section?: object;
    private pendingLock?: number;
    /** Drops a lock nobody uses any more; see {@link LOCK_LINGER_MS}. */
    private linger?: NodeJS.Timeout;
    /** In-process mutual exclusion for {@link withLock}: flock does not exclude a second holder of the same fd. */
    private mutex: Promise<void> = Promise.resolve();
    /** Called for every data chunk and for the process's exit, by whichever batch is running. */
    private sink?: { data(text: string): void; exit(err?: Error): void };

    /** Batches exchanged so far, the lock's included (dropping it is a line without an answer). */
    roundTrips = 0;

    constructor(private readonly spawn: () => Promise<InterpreterProcess>) {}

    /**
     * Run a batch of operations (queued behind any batch already running). The first batch of a locked section that
     * does not hold the lock yet takes it in the same round trip: `K` goes first, and when it fails the interpreter
     * skips the rest and this throws the lock's error.
     */
    run(ops: Op[], opts: RunOptions = {}): Promise<OpResult[]> {
        if (ops.length === 0) return Promise.resolve([]);
        const batch: Line = { ops, lines: ops.map(encodeOp) };
        const lockMs = this.pendingLock;
        if (lockMs === undefined || sections.getStore() !== this.section) return this.enqueue(() => this.drive(batch, opts));
        this.pendingLock = undefined;
        const secs = Math.max(1, Math.ceil(lockMs / 1000));
        const locked: Line = { ops: [lockOp(lockMs + 10_000), ...batch.ops], lines: [`K ${secs}`, ...batch.lines] };
        return this.enqueue(async () => {
            const [r, ...rest] = await this.drive(locked, opts).catch((e) => {
                this.pendingLock = lockMs;
                throw e;
            });
            if (!r.ok) {
                // Nothing ran; the section's next batch tries again.
                this.pendingLock = lockMs;
                throw new Error(`could not take the host lock ${LOCK_PATH}: ${r.message ?? "the interpreter went away"}`);
            }
            this.held = true;
            return rest;
        });
    }

    /** Drop the lock: one line, queued behind the batches before it, answered by nothing (so it costs no round
     *  trip). Never fails: a process that went away released the lock with its file descriptor. */
    private unlock(): Promise<void> {
        if (!this.held) return Promise.resolve();
        this.held = false;
        return this.enqueue(async () => this.proc?.write("U\n")).catch(() => undefined);
    }

    /**
     * Run `fn` holding the host-wide lock: first against other work of this program on the same interpreter, then
     * against every other process (flock). Throws when the lock is not free within `timeoutMs`.
     */
    async withLock<T>(fn: () => Promise<T>, timeoutMs: number): Promise<T> {
        const prev = this.mutex;
        let release!: () => void;
        const mine = new Promise<void>((r) => (release = r));
        // The next waiter waits for the previous holder too, even if we give up waiting for it.
        this.mutex = prev.then(() => mine);
        try {
            let timer: NodeJS.Timeout | undefined;
            const waited = await Promise.race([prev.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), timeoutMs)))]);
            clearTimeout(timer);
            if (!waited) throw new Error(`could not take the host lock ${LOCK_PATH}: another operation of this program held it for ${timeoutMs} ms`);
            if (this.linger) clearTimeout(this.linger);
            this.linger = undefined;
            // `held` may describe a process that has gone since; a fresh one waits for the lock like anyone else.
            if (!this.proc) this.held = false;
            // Taken by the section's first batch, in its round trip (see `run`).
            this.pendingLock = this.held ? undefined : timeoutMs;
            const token = {};
            this.section = token;
            try {
                return await sections.run(token, fn);
            } finally {
                this.pendingLock = undefined;
                this.section = undefined;
                this.linger = setTimeout(() => {
                    this.linger = undefined;
                    if (!this.section) void this.unlock();
                }, LOCK_LINGER_MS);
                this.linger.unref();
            }
        } finally {
            release();
        }
    }

    /** Wait for queued work, then let the interpreter exit (which also releases the lock). */
    async close(): Promise<void> {
        if (this.linger) clearTimeout(this.linger);
        this.linger = undefined;
        await this.tail.catch(() => undefined);
        const p = this.proc;
        this.proc = undefined;
        p?.end();
    }

    private enqueue<T>(fn: () => Promise<T>): Promise<T> {
        const next = this.tail.then(fn, fn);
        this.tail = next.catch(() => undefined);
        return next;
    }

    private async process(): Promise<InterpreterProcess> {
        if (this.proc) return this.proc;
        if (!this.starting) {
            this.starting = (async () => {
                const p = await this.spawn();
                p.onData((chunk) => this.sink?.data(decoders.get(p)!.write(chunk)));
                p.onExit((err) => {
                    if (this.proc === p) this.proc = undefined;
                    this.sink?.exit(err ?? new Error(`the batch interpreter exited: ${p.stderr().trim() || "no message"}`));
                });
                decoders.set(p, new StringDecoder("utf8"));
                this.proc = p;
                const wasHeld = this.held;
                this.held = false;
                if (this.section && wasHeld) {
                    // A fresh process inside a locked section: take the lock again without waiting (see the class comment).
                    const [r] = await this.exchange(p, { ops: [lockOp(SHORT_STEP_MS)], lines: ["K 0"] }, {}).catch(() => [{ ok: false } as OpResult]);
                    this.held = r.ok;
                }
                return p;
            })().finally(() => (this.starting = undefined));
        }
        return this.starting;
    }

    private async drive(batch: Line, opts: RunOptions): Promise<OpResult[]> {
        const p = await this.process();
        return this.exchange(p, batch, opts);
    }

    /**
     * Send one batch and parse trailers as they stream in, enforcing each op's time limit from the moment the
     * previous one finished. A timed-out op is reported as ETIMEDOUT and the process is abandoned.
     */
    private exchange(p: InterpreterProcess, batch: Line, opts: RunOptions): Promise<OpResult[]> {
        const { ops } = batch;
        const boundary = newBoundary();
        this.roundTrips++;
        return new Promise((resolve, reject) => {
            const results: OpResult[] = [];
            let buf = "";
            let timer: NodeJS.Timeout | undefined;
            let done = false;
            let stopped = false;
            const marker = "\n" + boundary + " ";

            const finish = (err?: Error) => {
                if (done) return;
                done = true;
                if (timer) clearTimeout(timer);
                this.sink = undefined;
                p.keepAlive(false);
                if (err) return reject(err);
                while (results.length < ops.length) results.push({ ok: false, data: "", skipped: true });
                resolve(results);
            };
            const arm = () => {
                if (timer) clearTimeout(timer);
                const i = results.length;
                // After a stop, the interpreter only skips lines up to the batch's end: the read limit is plenty.
                const op = stopped || i >= ops.length ? undefined : ops[i];
                const ms = op ? defaultTimeout(op) : SHORT_STEP_MS;
                timer = setTimeout(() => {
                    if (op) results.push({ ok: false, data: "", errno: "ETIMEDOUT", message: `${describeOp(op)} did not finish within ${ms} ms` });
                    if (this.proc === p) this.proc = undefined;
                    finish();
                    p.abandon();
                }, ms);
            };
            this.sink = {
                data: (text) => {
                    buf += text;
                    for (;;) {
                        const at = buf.indexOf(marker);
                        if (at < 0) break;
                        const eol = buf.indexOf("\n", at + marker.length);
                        if (eol < 0) break;
                        const content = buf.slice(0, at);
                        const [idx, status, ...msg] = buf.slice(at + marker.length, eol).split(" ");
                        buf = buf.slice(eol + 1);
                        if (idx === "E") return finish();
                        const op = ops[Number(idx)];
                        const r = toResult(op, Number(status), content, msg.join(" ").trim());
                        results.push(r);
                        if (!r.ok && opts.stopOnError && op && isMutation(op) && !("optional" in op && op.optional)) stopped = true;
                        arm();
                    }
                },
                exit: (err) => finish(new Error(`${err?.message ?? "the batch interpreter exited"} (after ${results.length} of ${ops.length} operations)`)),
            };
            p.keepAlive(true);
            arm();
            p.write([`B ${boundary} ${opts.stopOnError ? 1 : 0}`, ...batch.lines, "E"].join("\n") + "\n");
        });
    }
}

const decoders = new WeakMap<InterpreterProcess, StringDecoder>();

/** Which locked section (if any) a batch comes from, across the awaits of the section's code. */
const sections = new AsyncLocalStorage<object>();

/**
 * How long the lock stays held after a locked section ends, in milliseconds, so a program that changes a host several
 * times in a row (create then delete, or the resources of one `pulumi up`) takes it once (taking it is a wait on the
 * helper, and on a host without perl a flock process); another program waits at most this much longer. The lock is
 * never dropped inside a section, and always with the interpreter (when the program ends).
 */
export const LOCK_LINGER_MS = 2_000;

/** Time allowed for the interpreter's own short steps (drop the lock, skip to a batch's end). */
const SHORT_STEP_MS = 10_000;

/** A stand-in op for the lock lines, so time limits and messages work as for any other op. */
function lockOp(timeoutMs: number): Op {
    return { op: "exec", argv: ["flock", LOCK_PATH], timeoutMs };
}

function toResult(op: Op | undefined, code: number, content: string, message: string): OpResult {
    const r: OpResult = { ok: code === 0, data: content };
    if (op?.op === "exec") r.code = code;
    if (code !== 0) {
        r.data = op?.op === "exec" || op?.op === "groupHolders" ? content : "";
        r.message = message;
        r.errno = op?.op === "exec" ? undefined : code === 4 && op && isGuardRead(op) ? "ESTALE" : errnoFromMessage(message) ?? (message === "not a link" ? "EINVAL" : undefined);
    } else if (op?.op === "exec" && message) {
        r.message = message;
    }
    return r;
}

export function describeOp(op: Op): string {
    switch (op.op) {
        case "exec":
            return `running ${op.argv.join(" ")}`;
        case "write":
            return `writing ${JSON.stringify(op.data)} to ${op.path}`;
        case "put":
            return `writing ${op.path}`;
        default:
            return `${op.op} ${op.path}`;
    }
}

/** Quote an argv for a remote shell, each word in single quotes. Used for SSH exec only. */
export function quoteArgv(argv: string[]): string {
    return argv.map((a) => "'" + a.replace(/'/g, `'\\''`) + "'").join(" ");
}
