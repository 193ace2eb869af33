/**
 * The batch interpreter shared by the local and the SSH host: one constant bash program that reads operations
 * from stdin and answers each with its output followed by a trailer line. Nothing from user input ever becomes
 * shell text: the program is a constant, and every field travels on stdin as `\xHH`-escaped data that the
 * program decodes with `printf %b` into a variable.
 *
 * Why bash and not sh: bash reports a failed write(2) with its strerror text ("write error: No such device"),
 * which we map back to the errno the kernel returned; dash only says "I/O error".
 */
import { randomBytes } from "crypto";
import { StringDecoder } from "string_decoder";
import { Op, OpResult, RunOptions, assertSafePath, defaultTimeout, errnoFromMessage, isMutation } from "./types";

/**
 * Trailer: `\n<boundary> <index> <status> <message>\n` after each operation's output. The boundary is 32 random
 * hex characters per batch, so no file content can forge one.
 */
export const BATCH_SCRIPT = String.raw`
set -u
shopt -s nullglob dotglob
B=$1; STOP=$2; n=0
# Errors of builtin writes go to a per-batch file, so a write costs no fork (forks are what is slow on a busy host).
EF=\${TMPDIR:-/tmp}/pulumi-vfio-batch.$$.err; trap '[ -e "$EF" ] && rm -f "$EF"' EXIT
umask 077
exec 3>&1
t() { local m=\${2-}; m=\${m//$'\n'/ | }; printf '\n%s %d %d %s\n' "$B" "$n" "$1" "$m"; n=$((n+1)); }
d() { printf -v "$1" '%b' "$2"; }
fail() { t "$1" "$2"; if [ "$STOP" = 1 ] && [ "$3" != o ]; then exit 0; fi; }
while IFS=' ' read -r -a f; do
  [ \${#f[@]} -eq 0 ] && continue
  op=\${f[0]}; opt=\${f[1]}; p=''
  [ \${#f[@]} -gt 2 ] && d p "\${f[2]}"
  case $op in
  r) if [ ! -e "$p" ]; then t 1 "No such file or directory"
     elif { while IFS= read -r l || [ -n "$l" ]; do printf '%s\n' "$l"; done < "$p"; } 2>/dev/null; then t 0
     else t 1 "Input/output error"; fi ;;
  l) if x=$(readlink -- "$p" 2>/dev/null); then printf '%s' "$x"; t 0; else t 1 "not a link"; fi ;;
  d) if [ -d "$p" ]; then for e in "$p"/*; do printf '%s\n' "\${e##*/}"; done; t 0; else t 1 "No such file or directory"; fi ;;
  s) if x=$(stat -L -c '%F %a %u %g %s %t:%T' -- "$p" 2>&1 </dev/null); then printf '%s' "$x"; t 0; else t 1 "$x"; fi ;;
  w) if { printf '%b' "\${f[3]-}" > "$p"; } 2>"$EF"; then t 0; else e=''; IFS= read -r e < "$EF"; fail 1 "$e" "$opt"; fi ;;
  p) d m "\${f[3]}"; tmp="$p.pulumi-vfio.$$"
     if e=$( { umask 077; printf '%b' "\${f[4]-}" > "$tmp" && chmod "$m" "$tmp" && mv -f -- "$tmp" "$p"; } 2>&1 </dev/null ); then t 0; else rm -f -- "$tmp"; fail 1 "$e" "$opt"; fi ;;
  m) d m "\${f[3]}"; if e=$(mkdir -p -m "$m" -- "$p" 2>&1 </dev/null); then t 0; else fail 1 "$e" "$opt"; fi ;;
  u) if [ ! -e "$p" ] && [ ! -L "$p" ]; then t 0
     elif e=$(rm -f -- "$p" 2>&1 </dev/null); then t 0; else fail 1 "$e" "$opt"; fi ;;
  o) x=$(find /proc/[0-9]*/fd -maxdepth 1 -lname "$p" 2>/dev/null </dev/null); unset seen; declare -A seen
     while IFS=/ read -r _ _ pid _; do [ -n "$pid" ] && [ -z "\${seen[$pid]-}" ] && { seen[$pid]=1; printf '%s\n' "$pid"; }; done <<< "$x"; t 0 ;;
  x) a=(); for v in "\${f[@]:3}"; do d x "$v"; a+=("$x"); done
     e=$("\${a[@]}" 2>&1 >&3 3>&- </dev/null); rc=$?
     if [ $rc -eq 0 ]; then t 0 "$e"; else fail $rc "$e" "$opt"; fi ;;
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
    const opt = "optional" in op && op.optional ? "o" : "-";
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
    return parts.join(" ");
}

export interface BatchProcess {
    /** Feed stdin (all at once) and close it. */
    write(input: string): void;
    onData(cb: (chunk: Buffer) => void): void;
    onExit(cb: (err?: Error) => void): void;
    /** Kill the process (group) and stop listening; a write stuck in the kernel stays stuck, abandoned. */
    abandon(): void;
    /** Whatever the process wrote on stderr, for errors. */
    stderr(): string;
}

export function newBoundary(): string {
    return randomBytes(16).toString("hex");
}

/**
 * Drive one batch over a started interpreter process: send the ops, parse trailers as they stream in, and enforce
 * each op's time limit from the moment the previous one finished. A timed-out op is reported as ETIMEDOUT and the
 * process is abandoned (a writer blocked in the kernel cannot be killed, only left behind).
 */
export function driveBatch(proc: BatchProcess, boundary: string, ops: Op[], opts: RunOptions = {}): Promise<OpResult[]> {
    return new Promise((resolve, reject) => {
        const results: OpResult[] = [];
        let buf = "";
        let timer: NodeJS.Timeout | undefined;
        let done = false;
        const marker = "\n" + boundary + " ";
        // A multi-byte character can be split across chunks: decode the stream, not each chunk.
        const decoder = new StringDecoder("utf8");

        const finish = (err?: Error) => {
            if (done) return;
            done = true;
            if (timer) clearTimeout(timer);
            if (err) return reject(err);
            while (results.length < ops.length) results.push({ ok: false, data: "", skipped: true });
            resolve(results);
        };
        const arm = () => {
            if (timer) clearTimeout(timer);
            const i = results.length;
            if (i >= ops.length) return;
            const ms = defaultTimeout(ops[i]);
            timer = setTimeout(() => {
                const what = describeOp(ops[i]);
                results.push({ ok: false, data: "", errno: "ETIMEDOUT", message: `${what} did not finish within ${ms} ms` });
                proc.abandon();
                finish();
            }, ms);
        };
        proc.onData((chunk) => {
            buf += decoder.write(chunk);
            for (;;) {
                const at = buf.indexOf(marker);
                if (at < 0) break;
                const eol = buf.indexOf("\n", at + marker.length);
                if (eol < 0) break;
                const content = buf.slice(0, at);
                const [idx, status, ...msg] = buf.slice(at + marker.length, eol).split(" ");
                buf = buf.slice(eol + 1);
                const i = Number(idx);
                const op = ops[i];
                const code = Number(status);
                const message = msg.join(" ").trim();
                const r: OpResult = { ok: code === 0, data: content };
                if (op?.op === "exec") r.code = code;
                if (code !== 0) {
                    r.data = op?.op === "exec" ? content : "";
                    r.message = message;
                    r.errno = op?.op === "exec" ? undefined : errnoFromMessage(message) ?? (message === "not a link" ? "EINVAL" : undefined);
                } else if (op?.op === "exec" && message) {
                    r.message = message;
                }
                results.push(r);
                if (!r.ok && opts.stopOnError && op && isMutation(op) && !("optional" in op && op.optional)) {
                    finish();
                    return;
                }
                arm();
            }
        });
        proc.onExit((err) => {
            if (done) return;
            if (results.length < ops.length && !opts.stopOnError) {
                return finish(err ?? new Error(`the batch interpreter exited after ${results.length} of ${ops.length} operations: ${proc.stderr().trim()}`));
            }
            finish();
        });
        arm();
        proc.write(ops.map(encodeOp).join("\n") + "\n");
    });
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
