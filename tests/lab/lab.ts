// The lab host fixture (shared/LAB.md): boots the cached guest image built by tests/lab/build.sh under QEMU,
// on a q35 machine with an emulated IOMMU, a GPU + HDMI-audio pair sharing one IOMMU group, an edu device and
// an SR-IOV capable NVMe, and gives ssh/copy/reboot/QMP access to it. Used by jest (globalSetup.ts,
// labState.ts), by the smoke check (smoke.ts) and by benchmarks.
//
// Environment:
//   PULUMI_VFIO_LAB_CACHE     image cache root (default ~/.cache/pulumi-vfio-lab; same as build.sh)
//   PULUMI_VFIO_LAB_IMAGE     use this image directory instead of the one for the current recipe hash
//   PULUMI_VFIO_LAB_RUN_ROOT  where run dirs go (default $TMPDIR/pulumi-vfio-lab); stale ones are reaped here
//   PULUMI_VFIO_LAB_ACCEL     kvm | tcg, skipping the (cached) KVM probe
//   PULUMI_VFIO_LAB_CPU       TCG CPU model (default max)
//   PULUMI_VFIO_LAB_SSH_MUX   0 to give every ssh call its own connection
//   PULUMI_VFIO_LAB_BOOT_TIMEOUT_S  how long to wait for SSH after starting QEMU (default 240)
import * as child_process from "child_process";
import * as crypto from "crypto";
import * as fs from "fs";
import * as net from "net";
import * as os from "os";
import * as path from "path";

export interface LabConnection {
    /** Always "127.0.0.1": the SSH port is forwarded on loopback only. */
    host: string;
    port: number;
    /** Always "root". */
    user: string;
    /** OpenSSH private key text (ed25519, no passphrase). */
    privateKey: string;
    /** The guest sshd's ed25519 host key (`ssh-ed25519 AAAA...`), read once the VM is up, so every SSH host under
     *  test verifies it as a user's connection would (the provider refuses a key it cannot verify). */
    hostKey: string;
}

export interface LabManifest {
    hash: string;
    kernelVersion: string;
    kernelPackageVersion: string;
    builtAt: string;
    packages: Record<string, string>;
    [key: string]: unknown;
}

export interface LabImage {
    /** The cache directory holding the image. */
    dir: string;
    /** The recipe hash (cache directory name). */
    hash: string;
    kernelVersion: string;
    disk: string;
    kernel: string;
    initrd: string;
    privateKeyPath: string;
    manifest: LabManifest;
    /** The ESP disk (GPT, FAT) with a standalone GRUB that boots the root disk's /boot/grub/grub.cfg. */
    espGrub: string;
    /** The ESP disk (GPT, FAT, label LABSDBOOT) with systemd-boot, its loader entry, kernel and initrd: the guest's /efi. */
    espSdboot: string;
}

/**
 * How the lab boots: `kernel` (QEMU's -kernel/-initrd/-append: fast, the IOMMU on, no boot loader reads any file),
 * `grub` (OVMF → the ESP's GRUB → the guest's own /boot/grub/grub.cfg, as a real host boots; the command line is
 * the guest's /etc/default/grub's, without intel_iommu=on until a test adds it) or `sdboot` (OVMF → systemd-boot on
 * its own ESP, the guest's /efi → the loader entry kernel-install writes there, with /etc/kernel/cmdline's line).
 * The ESP is a snapshot=on disk like the root: the guest's writes last as long as the QEMU process, reboots included.
 */
export type LabBoot = "kernel" | "grub" | "sdboot";

/** Debian's ovmf package: the 4 MiB firmware code and the template of its variable store. */
export const OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd";
export const OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd";

export type Accel = "kvm" | "tcg";

export interface SshResult {
    code: number;
    stdout: string;
    stderr: string;
}

export interface SshOptions {
    /** Written to the remote command's stdin (which is closed otherwise). */
    input?: string;
    /** Default 120 s. On expiry the local ssh is killed and the promise rejects (the remote side may go on). */
    timeoutMs?: number;
}

export interface RebootOptions {
    /** Default 420 s. */
    timeoutMs?: number;
    force?: boolean;
}

/** What a test needs to use a running lab VM; works in any process on this machine (see LabState). */
export interface LabHandle {
    connection: LabConnection;
    accel: Accel;
    runDir: string;
    /** A 0600 copy of the private key, for tools that want a file. */
    keyPath: string;
    kernelVersion: string;
    /** Runs argv in the guest as root; every argument is single-quoted, so no shell expansion happens. */
    ssh(argv: string[], opts?: SshOptions): Promise<SshResult>;
    /** Copies a local file or directory into remoteDir (created if missing) with tar over ssh. */
    copyTo(localPath: string, remoteDir: string): Promise<void>;
    /** QMP command on the lab VM's own QEMU. */
    qmp(command: string, args?: object): Promise<unknown>;
    /**
     * Real guest reboot in the same QEMU (a snapshot=on disk keeps its changes); resolves once SSH is back.
     * Slow under TCG (60-180 s: a warm-reset boot is slower than a cold one); `force` skips the orderly
     * service shutdown (`systemctl reboot --force`: processes killed, file systems unmounted).
     */
    reboot(opts?: RebootOptions): Promise<void>;
}

export interface LabVm extends LabHandle {
    pid: number;
    image: LabImage;
    /** Milliseconds from starting QEMU to the first successful ssh. */
    bootMs: number;
    /** Powers the guest off (kills QEMU if it has not exited within ~20 s) and removes the run dir. */
    stop(): Promise<void>;
    /** The serializable description of this VM, for LabHandle in other processes. */
    state(): LabRunState;
}

/** A booted VM's description: what globalSetup writes for the jest workers (see labState.ts). */
export interface LabRunState {
    connection: LabConnection;
    keyPath: string;
    pid: number;
    runDir: string;
    accel: Accel;
    qmpSocket: string;
    consoleLog: string;
    kernelVersion: string;
    imageDir: string;
    bootMs: number;
}
/** The jest state file: a running VM, a reason the lab is unavailable, or why booting it failed. */
export type LabState = LabRunState | { skip: string } | { error: string };

/** MAC of the SSH NIC; build.sh names the interface with this MAC lab0 in a systemd .link file. */
export const LAB_MAC = "52:54:00:4c:41:42";
/** QEMU is killed after this long even if every owner crashed. */
export const MAX_LIFETIME_S = 2 * 60 * 60;
/** Cold boot to SSH: ~30 s alone under TCG, several times that when other TCG VMs share the 2 cores. */
const SSH_BOOT_TIMEOUT_MS = (Number(process.env.PULUMI_VFIO_LAB_BOOT_TIMEOUT_S) || 240) * 1000;
const REBOOT_TIMEOUT_MS = 420_000;
const KVM_PROBE_TIMEOUT_MS = 5_000;
const CONSOLE_TAIL_LINES = 40;

export function cacheRoot(): string {
    return process.env.PULUMI_VFIO_LAB_CACHE || path.join(os.homedir(), ".cache", "pulumi-vfio-lab");
}

/** Where each lab VM gets its run dir (pidfile, QMP socket, console log); short, for the socket path limit. */
export function runRoot(): string {
    return process.env.PULUMI_VFIO_LAB_RUN_ROOT || path.join(os.tmpdir(), "pulumi-vfio-lab");
}

/** The repository root: the first parent of this file's directory holding tests/lab/build.sh (src or dist). */
export function repoRoot(): string | undefined {
    for (let d = __dirname; ; d = path.dirname(d)) {
        if (fs.existsSync(path.join(d, "tests", "lab", "build.sh"))) return d;
        if (path.dirname(d) === d) return undefined;
    }
}

/** The cache key build.sh uses: the first 16 hex digits of the sha256 of build.sh (the whole recipe). */
export function recipeHash(buildScript: string): string {
    return crypto.createHash("sha256").update(fs.readFileSync(buildScript)).digest("hex").slice(0, 16);
}

function which(cmd: string): string | undefined {
    for (const dir of (process.env.PATH || "/usr/local/bin:/usr/bin:/bin").split(path.delimiter)) {
        const p = path.join(dir, cmd);
        try {
            fs.accessSync(p, fs.constants.X_OK);
            return p;
        } catch {
            /* next */
        }
    }
    return undefined;
}

/** The cached image for the current recipe, or why there is none. */
export function findLabImage(): LabImage | { skip: string } {
    if (process.platform !== "linux") return { skip: `the lab needs Linux (this is ${process.platform})` };
    let dir = process.env.PULUMI_VFIO_LAB_IMAGE;
    let hash: string;
    if (dir) {
        hash = path.basename(dir);
    } else {
        const root = repoRoot();
        if (!root) return { skip: `cannot find tests/lab/build.sh above ${__dirname}` };
        hash = recipeHash(path.join(root, "tests", "lab", "build.sh"));
        dir = path.join(cacheRoot(), hash);
    }
    const files = ["manifest.json", "lab.img", "vmlinuz", "initrd.img", "id_ed25519"];
    const missing = files.filter((f) => !fs.existsSync(path.join(dir!, f)));
    if (missing.length > 0) {
        return {
            skip: `lab image for recipe ${hash} not built (${dir} lacks ${missing.join(", ")}); run \`npm run lab:build\``,
        };
    }
    for (const [bin, pkg] of [["qemu-system-x86_64", "qemu-system-x86"], ["ssh", "openssh-client"], ["tar", "tar"]]) {
        if (!which(bin)) return { skip: `${bin} not found (apt-get install ${pkg}, or run \`npm run lab:build\`)` };
    }
    let manifest: LabManifest;
    try {
        manifest = JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8"));
    } catch (e) {
        return { skip: `unreadable ${path.join(dir, "manifest.json")}: ${(e as Error).message}` };
    }
    return {
        dir,
        hash,
        kernelVersion: manifest.kernelVersion,
        disk: path.join(dir, "lab.img"),
        kernel: path.join(dir, "vmlinuz"),
        initrd: path.join(dir, "initrd.img"),
        privateKeyPath: path.join(dir, "id_ed25519"),
        manifest,
        espGrub: path.join(dir, "esp-grub.img"),
        espSdboot: path.join(dir, "esp-sdboot.img"),
    };
}

// ---------------------------------------------------------------------------------------------------------
// small process helpers

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function isAlive(pid: number): boolean {
    if (!(pid > 0)) return false;
    try {
        process.kill(pid, 0);
    } catch (e) {
        return (e as NodeJS.ErrnoException).code === "EPERM";
    }
    // A zombie still answers kill(0); it is as good as gone.
    try {
        return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8"));
    } catch {
        return false;
    }
}

function cmdlineOf(pid: number): string {
    try {
        return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
    } catch {
        return "";
    }
}

function readPid(file: string): number {
    try {
        return parseInt(fs.readFileSync(file, "utf8").trim(), 10) || 0;
    } catch {
        return 0;
    }
}

/** Kills a lab QEMU if pid really is the one started for runDir (pids get reused). */
function killQemu(pid: number, runDir: string, signal: NodeJS.Signals = "SIGKILL"): void {
    if (isAlive(pid) && cmdlineOf(pid).includes(runDir)) {
        try {
            process.kill(pid, signal);
        } catch {
            /* gone */
        }
    }
}

/** The ssh multiplexing master of runDir, if it still runs (it would exit by itself once QEMU is gone). */
function killMuxMaster(runDir: string): void {
    const pid = readPid(path.join(runDir, "mux.pid"));
    if (pid && isAlive(pid) && cmdlineOf(pid).includes(runDir)) {
        try {
            process.kill(pid, "SIGTERM");
        } catch {
            /* gone */
        }
    }
}

/** PULUMI_VFIO_LAB_SSH_MUX=0 turns ssh connection sharing off (every call then does its own key exchange). */
function muxEnabled(): boolean {
    return process.env.PULUMI_VFIO_LAB_SSH_MUX !== "0";
}

export function shellQuote(arg: string): string {
    return `'${arg.replace(/'/g, `'\\''`)}'`;
}

export function tail(file: string, lines = CONSOLE_TAIL_LINES): string {
    try {
        const text = fs.readFileSync(file, "utf8").replace(/\r/g, "");
        return text.split("\n").slice(-lines - 1).join("\n");
    } catch {
        return `(no ${file})`;
    }
}

interface Exit {
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: Buffer;
    stderr: Buffer;
    timedOut: boolean;
}

function run(cmd: string, args: string[], opts: { input?: string | Buffer; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<Exit> {
    return new Promise((resolve, reject) => {
        const child = child_process.spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"], env: opts.env });
        const out: Buffer[] = [];
        const err: Buffer[] = [];
        let timedOut = false;
        const timer = opts.timeoutMs
            ? setTimeout(() => {
                  timedOut = true;
                  child.kill("SIGKILL");
              }, opts.timeoutMs)
            : undefined;
        child.stdout.on("data", (d: Buffer) => out.push(d));
        child.stderr.on("data", (d: Buffer) => err.push(d));
        child.stdin.on("error", () => undefined); // EPIPE when the command ignores its input
        child.on("error", (e) => {
            if (timer) clearTimeout(timer);
            reject(e);
        });
        child.on("close", (code, signal) => {
            if (timer) clearTimeout(timer);
            resolve({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err), timedOut });
        });
        child.stdin.end(opts.input ?? "");
    });
}

// ---------------------------------------------------------------------------------------------------------
// the client side: ssh, copy, QMP, reboot. Needs only the state, so jest workers can rebuild it.

export class LabClient implements LabHandle {
    readonly connection: LabConnection;
    readonly accel: Accel;
    readonly runDir: string;
    readonly keyPath: string;
    readonly kernelVersion: string;
    readonly pid: number;
    readonly qmpSocket: string;
    readonly consoleLog: string;

    constructor(protected readonly st: LabRunState) {
        this.connection = st.connection;
        this.accel = st.accel;
        this.runDir = st.runDir;
        this.keyPath = st.keyPath;
        this.kernelVersion = st.kernelVersion;
        this.pid = st.pid;
        this.qmpSocket = st.qmpSocket;
        this.consoleLog = st.consoleLog;
        if (!fs.existsSync(this.keyPath)) {
            // Another process (or a cleaned run dir): put the key back where ssh expects it.
            fs.mkdirSync(path.dirname(this.keyPath), { recursive: true });
            fs.writeFileSync(this.keyPath, st.connection.privateKey, { mode: 0o600 });
        }
    }

    state(): LabRunState {
        return { ...this.st };
    }

    /** The ssh options for this VM, without multiplexing and without the destination. */
    private baseSshOptions(connectTimeoutS = 10): string[] {
        const c = this.connection;
        return [
            "-F", "/dev/null",
            "-i", this.keyPath,
            "-p", String(c.port),
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
            "-o", `ConnectTimeout=${connectTimeoutS}`,
            "-o", "ServerAliveInterval=10",
            "-o", "ServerAliveCountMax=6",
        ];
    }

    /**
     * The ssh command line (without the remote command), for tools that shell out themselves. Goes through the
     * VM's multiplexing master when one runs (a new connection costs ~1 s of key exchange on an emulated CPU,
     * a multiplexed session ~20 ms); with no master, ssh connects directly.
     */
    sshArgs(): string[] {
        this.clearStaleMux();
        const c = this.connection;
        const mux = muxEnabled() ? ["-o", "ControlMaster=no", "-o", `ControlPath=${this.muxSocket}`] : [];
        return [...this.baseSshOptions(), ...mux, `${c.user}@${c.host}`];
    }

    private get muxSocket(): string {
        return path.join(this.runDir, "mux.sock");
    }

    private get muxPidFile(): string {
        return path.join(this.runDir, "mux.pid");
    }

    private muxMasterPid(): number {
        const pid = readPid(this.muxPidFile);
        return pid && isAlive(pid) && cmdlineOf(pid).includes(this.muxSocket) ? pid : 0;
    }

    /** A socket left by a killed master makes every client print "Control socket connect(...)": remove it. */
    private clearStaleMux(): void {
        if (fs.existsSync(this.muxSocket) && !this.muxMasterPid()) fs.rmSync(this.muxSocket, { force: true });
    }

    /** Starts the multiplexing master if none runs (it exits by itself when the guest's sshd or QEMU goes). */
    async ensureMux(): Promise<void> {
        if (!muxEnabled() || !isAlive(this.pid)) return;
        this.clearStaleMux();
        if (fs.existsSync(this.muxSocket)) return;
        const lock = path.join(this.runDir, "mux.lock");
        try {
            fs.writeFileSync(lock, String(process.pid), { flag: "wx" });
        } catch {
            // Another process is starting it; a lock older than the start-up limit is a leftover.
            try {
                if (Date.now() - fs.statSync(lock).mtimeMs > 30_000) fs.rmSync(lock, { force: true });
            } catch {
                /* gone */
            }
            for (let i = 0; i < 150 && !fs.existsSync(this.muxSocket); i++) await sleep(100);
            return;
        }
        try {
            const c = this.connection;
            const master = child_process.spawn(
                "ssh",
                [...this.baseSshOptions(), "-o", "ControlMaster=yes", "-o", `ControlPath=${this.muxSocket}`,
                 "-o", "ControlPersist=no", "-N", `${c.user}@${c.host}`],
                { detached: true, stdio: "ignore" },
            );
            master.unref();
            if (master.pid) fs.writeFileSync(this.muxPidFile, String(master.pid));
            const deadline = Date.now() + 15_000;
            while (!fs.existsSync(this.muxSocket) && Date.now() < deadline && master.exitCode === null) await sleep(50);
            if (!fs.existsSync(this.muxSocket)) this.stopMux();
        } finally {
            fs.rmSync(lock, { force: true });
        }
    }

    /** Ends the multiplexing master; later ssh calls connect directly until ensureMux(). */
    stopMux(): void {
        const pid = this.muxMasterPid();
        if (pid) {
            try {
                process.kill(pid, "SIGTERM");
            } catch {
                /* gone */
            }
        }
        fs.rmSync(this.muxSocket, { force: true });
        fs.rmSync(this.muxPidFile, { force: true });
    }

    async ssh(argv: string[], opts: SshOptions = {}): Promise<SshResult> {
        if (argv.length === 0) throw new Error("ssh: empty argv");
        const timeoutMs = opts.timeoutMs ?? 120_000;
        const r = await run("ssh", [...this.sshArgs(), "--", argv.map(shellQuote).join(" ")], {
            input: opts.input,
            timeoutMs,
        });
        if (r.timedOut) {
            throw Object.assign(new Error(`lab ssh timed out after ${timeoutMs} ms: ${argv.join(" ")}`), {
                timedOut: true,
                stdout: r.stdout.toString("utf8"),
                stderr: r.stderr.toString("utf8"),
            });
        }
        return { code: r.code ?? 255, stdout: r.stdout.toString("utf8"), stderr: r.stderr.toString("utf8") };
    }

    /** ssh that must succeed (exit 0); returns stdout. */
    async sh(script: string, opts: SshOptions = {}): Promise<string> {
        const r = await this.ssh(["sh", "-c", script], opts);
        if (r.code !== 0) throw new Error(`lab: \`${script}\` exited ${r.code}: ${r.stderr.trim()}`);
        return r.stdout;
    }

    async copyTo(localPath: string, remoteDir: string): Promise<void> {
        const abs = path.resolve(localPath);
        if (!fs.existsSync(abs)) throw new Error(`copyTo: ${abs} does not exist`);
        const remote = `mkdir -p ${shellQuote(remoteDir)} && tar -C ${shellQuote(remoteDir)} --no-same-owner -xf -`;
        await new Promise<void>((resolve, reject) => {
            const tar = child_process.spawn("tar", ["-C", path.dirname(abs), "-cf", "-", path.basename(abs)], {
                stdio: ["ignore", "pipe", "pipe"],
            });
            const ssh = child_process.spawn("ssh", [...this.sshArgs(), "--", remote], { stdio: ["pipe", "pipe", "pipe"] });
            tar.stdout.pipe(ssh.stdin);
            ssh.stdin.on("error", () => undefined);
            let tarErr = "";
            let sshErr = "";
            tar.stderr.on("data", (d) => (tarErr += d));
            ssh.stderr.on("data", (d) => (sshErr += d));
            ssh.stdout.resume();
            const timer = setTimeout(() => {
                tar.kill("SIGKILL");
                ssh.kill("SIGKILL");
            }, 300_000);
            let tarCode: number | null = null;
            tar.on("error", reject);
            ssh.on("error", reject);
            tar.on("close", (code) => (tarCode = code));
            ssh.on("close", (code) => {
                clearTimeout(timer);
                // tar's close may come after ssh's; give it a tick.
                setImmediate(() => {
                    if (code === 0 && (tarCode === 0 || tarCode === null)) resolve();
                    else reject(new Error(`copyTo ${abs} -> ${remoteDir} failed (tar ${tarCode}, ssh ${code}): ${tarErr}${sshErr}`));
                });
            });
        });
    }

    qmp(command: string, args?: object): Promise<unknown> {
        return qmpCommand(this.qmpSocket, command, args);
    }

    async bootId(): Promise<string | undefined> {
        try {
            const r = await this.ssh(["cat", "/proc/sys/kernel/random/boot_id"], { timeoutMs: 20_000 });
            return r.code === 0 ? r.stdout.trim() : undefined;
        } catch {
            return undefined;
        }
    }

    async reboot(opts: RebootOptions = {}): Promise<void> {
        const timeoutMs = opts.timeoutMs ?? REBOOT_TIMEOUT_MS;
        const before = await this.bootId();
        if (!before) throw new Error("reboot: the lab guest does not answer over ssh");
        // sshd dies with the session, so the exit code (often 255) says nothing.
        const cmd = opts.force ? ["systemctl", "reboot", "--force"] : ["systemctl", "reboot"];
        await this.ssh(cmd, { timeoutMs: 20_000 }).catch(() => undefined);
        // The master would only notice a dead peer after ServerAlive* (60 s): poll over fresh connections.
        this.stopMux();
        const deadline = Date.now() + timeoutMs;
        while (Date.now() < deadline) {
            if (!isAlive(this.pid)) throw new Error(`reboot: QEMU exited\n${tail(this.consoleLog)}`);
            const now = await this.bootId();
            if (now && now !== before) return this.ensureMux();
            await sleep(1000);
        }
        throw new Error(`reboot: no ssh after ${timeoutMs / 1000} s; console:\n${tail(this.consoleLog)}`);
    }
}

/** One QMP exchange on a fresh connection: greeting, qmp_capabilities, the command. */
export function qmpCommand(socketPath: string, command: string, args?: object, timeoutMs = 10_000): Promise<unknown> {
    return new Promise((resolve, reject) => {
        const sock = net.createConnection(socketPath);
        let buf = "";
        let stage = 0; // 0 greeting, 1 capabilities sent, 2 command sent
        const done = (err: Error | undefined, value?: unknown) => {
            clearTimeout(timer);
            sock.destroy();
            if (err) reject(err);
            else resolve(value);
        };
        const timer = setTimeout(() => done(new Error(`QMP ${command}: no answer in ${timeoutMs} ms`)), timeoutMs);
        sock.on("error", (e) => done(new Error(`QMP ${socketPath}: ${e.message}`)));
        sock.on("close", () => {
            if (stage === 2 && command === "quit") done(undefined, {});
            else done(new Error(`QMP ${command}: connection closed`));
        });
        sock.on("data", (d) => {
            buf += d.toString("utf8");
            let nl: number;
            while ((nl = buf.indexOf("\n")) >= 0) {
                const line = buf.slice(0, nl).trim();
                buf = buf.slice(nl + 1);
                if (!line) continue;
                let msg: any;
                try {
                    msg = JSON.parse(line);
                } catch {
                    continue;
                }
                if (msg.event) continue;
                if (stage === 0 && msg.QMP) {
                    stage = 1;
                    sock.write(JSON.stringify({ execute: "qmp_capabilities" }) + "\n");
                } else if (stage === 1 && ("return" in msg || "error" in msg)) {
                    if (msg.error) return done(new Error(`QMP qmp_capabilities: ${msg.error.desc}`));
                    stage = 2;
                    sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n");
                } else if (stage === 2) {
                    if (msg.error) return done(new Error(`QMP ${command}: ${msg.error.class}: ${msg.error.desc}`));
                    if ("return" in msg) return done(undefined, msg.return);
                }
            }
        });
    });
}

// ---------------------------------------------------------------------------------------------------------
// accelerator choice

/** /dev/kvm usable by us; whether stock kernels actually boot under it is the probe's question. */
function kvmDeviceUsable(): boolean {
    try {
        fs.accessSync("/dev/kvm", fs.constants.R_OK | fs.constants.W_OK);
        return true;
    } catch {
        return false;
    }
}

interface ProbeRecord {
    key: string;
    ok: boolean;
    detail: string;
    at: string;
}

function probeFile(): string {
    return path.join(cacheRoot(), "kvm-probe.json");
}

function probeKey(image: LabImage): string {
    const qemu = which("qemu-system-x86_64") || "";
    let qemuStamp = "";
    try {
        const s = fs.statSync(qemu);
        qemuStamp = `${s.size}:${s.mtimeMs}`;
    } catch {
        /* none */
    }
    return [os.release(), qemu, qemuStamp, image.kernelVersion].join("|");
}

/** Records a probe result (also used when a KVM boot that passed the probe did not reach SSH). */
function recordProbe(image: LabImage, ok: boolean, detail: string): void {
    const rec: ProbeRecord = { key: probeKey(image), ok, detail, at: new Date().toISOString() };
    try {
        fs.mkdirSync(cacheRoot(), { recursive: true });
        fs.writeFileSync(probeFile(), JSON.stringify(rec, null, 2) + "\n");
    } catch {
        /* read-only cache: probe again next time */
    }
}

/**
 * Boots the lab kernel under KVM with no root device: a working KVM reaches "Kernel panic ... VFS" in about a
 * second; here the host rejects stock kernels (LAB.md: `failed to set MSR 0x10a` with -cpu host) or hangs.
 * At most KVM_PROBE_TIMEOUT_MS, once per host kernel / QEMU binary / guest kernel (cached in the cache root).
 */
async function probeKvm(image: LabImage): Promise<{ ok: boolean; detail: string }> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pulumi-vfio-kvm-probe-"));
    const log = path.join(dir, "console.log");
    try {
        const r = await run(
            "qemu-system-x86_64",
            [
                "-accel", "kvm", "-cpu", "host", "-M", "q35", "-m", "256", "-smp", "1",
                "-nodefaults", "-display", "none", "-no-reboot",
                "-serial", `file:${log}`,
                "-kernel", image.kernel,
                "-append", "console=ttyS0 panic=-1 root=/dev/lab-kvm-probe-none rootwait=0",
            ],
            { timeoutMs: KVM_PROBE_TIMEOUT_MS },
        );
        const out = fs.existsSync(log) ? fs.readFileSync(log, "utf8") : "";
        if (/Kernel panic|VFS: Unable to mount root|Run \/init|Freeing unused kernel/.test(out)) {
            return { ok: true, detail: "kernel reached root mount under KVM" };
        }
        if (r.timedOut) return { ok: false, detail: `no kernel progress under KVM in ${KVM_PROBE_TIMEOUT_MS} ms` };
        return { ok: false, detail: `qemu exited ${r.code}: ${r.stderr.toString("utf8").trim().split("\n").slice(-2).join(" ")}` };
    } catch (e) {
        return { ok: false, detail: (e as Error).message };
    } finally {
        fs.rmSync(dir, { recursive: true, force: true });
    }
}

export async function chooseAccel(image: LabImage): Promise<{ accel: Accel; detail: string }> {
    const forced = process.env.PULUMI_VFIO_LAB_ACCEL;
    if (forced === "kvm" || forced === "tcg") return { accel: forced, detail: "PULUMI_VFIO_LAB_ACCEL" };
    if (!kvmDeviceUsable()) return { accel: "tcg", detail: "/dev/kvm not usable" };
    const key = probeKey(image);
    try {
        const rec: ProbeRecord = JSON.parse(fs.readFileSync(probeFile(), "utf8"));
        if (rec.key === key) return { accel: rec.ok ? "kvm" : "tcg", detail: `cached probe: ${rec.detail}` };
    } catch {
        /* no cached probe */
    }
    const p = await probeKvm(image);
    recordProbe(image, p.ok, p.detail);
    return { accel: p.ok ? "kvm" : "tcg", detail: `probe: ${p.detail}` };
}

// ---------------------------------------------------------------------------------------------------------
// leak guards

interface Owner {
    ownerPid: number;
    startedAt: number;
}

const live = new Map<number, string>(); // qemu pid -> run dir, VMs this process must not leave behind
let guardsInstalled = false;

function killLiveSync(): void {
    for (const [pid, runDir] of live) {
        killQemu(pid, runDir);
        killMuxMaster(runDir);
        fs.rmSync(runDir, { recursive: true, force: true });
    }
    live.clear();
}

function installGuards(): void {
    if (guardsInstalled) return;
    guardsInstalled = true;
    process.on("exit", killLiveSync);
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as NodeJS.Signals[]) {
        const handler = () => {
            killLiveSync();
            // If nobody else handles the signal, die of it as we would have without this handler.
            if (process.listenerCount(sig) === 1) {
                process.removeListener(sig, handler);
                process.kill(process.pid, sig);
            }
        };
        process.on(sig, handler);
    }
}

/** Kills lab VMs whose owner process is gone (or that outlived MAX_LIFETIME_S) and removes their run dirs. */
export function killStaleLabs(): string[] {
    const root = runRoot();
    const killed: string[] = [];
    let entries: string[] = [];
    try {
        entries = fs.readdirSync(root).filter((e) => e.startsWith("run-"));
    } catch {
        return killed;
    }
    for (const e of entries) {
        const dir = path.join(root, e);
        let owner: Owner | undefined;
        try {
            owner = JSON.parse(fs.readFileSync(path.join(dir, "owner.json"), "utf8"));
        } catch {
            /* half-made run dir */
        }
        let ageS = 0;
        try {
            ageS = (Date.now() - (owner?.startedAt ?? fs.statSync(dir).mtimeMs)) / 1000;
        } catch {
            continue;
        }
        const ownerGone = owner ? !isAlive(owner.ownerPid) : ageS > 60;
        if (!ownerGone && ageS < MAX_LIFETIME_S) continue;
        if (owner?.ownerPid === process.pid && ageS < MAX_LIFETIME_S) continue;
        const pid = readPid(path.join(dir, "qemu.pid"));
        if (pid) killQemu(pid, dir);
        killMuxMaster(dir);
        fs.rmSync(dir, { recursive: true, force: true });
        killed.push(dir);
    }
    return killed;
}

/** A detached shell that kills QEMU after MAX_LIFETIME_S, and exits by itself as soon as QEMU does. */
function startWatchdog(pid: number): void {
    const script =
        'timeout "$2" tail --pid="$1" -f /dev/null; ' +
        'if kill -0 "$1" 2>/dev/null; then kill -TERM "$1"; sleep 10; kill -KILL "$1" 2>/dev/null; fi';
    const child = child_process.spawn("sh", ["-c", script, "pulumi-vfio-lab-watchdog", String(pid), String(MAX_LIFETIME_S)], {
        detached: true,
        stdio: "ignore",
    });
    child.unref();
}

// ---------------------------------------------------------------------------------------------------------
// boot

function freePort(): Promise<number> {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.unref();
        srv.on("error", reject);
        srv.listen(0, "127.0.0.1", () => {
            const port = (srv.address() as net.AddressInfo).port;
            srv.close(() => resolve(port));
        });
    });
}

/** QEMU arguments for the lab machine of LAB.md. */
export function qemuArgs(o: {
    image: LabImage;
    accel: Accel;
    memoryMb: number;
    port: number;
    runDir: string;
    boot?: LabBoot;
}): string[] {
    const accel =
        o.accel === "kvm"
            ? ["-accel", "kvm", "-cpu", "host"]
            : ["-accel", "tcg,thread=multi", "-cpu", process.env.PULUMI_VFIO_LAB_CPU || "max"];
    return [
        "-name", "pulumi-vfio-lab,process=pulumi-vfio-lab",
        "-M", "q35,kernel-irqchip=split",
        ...accel,
        "-smp", "2",
        "-m", String(o.memoryMb),
        "-device", "intel-iommu,intremap=on,caching-mode=on",
        // A -device VGA suppresses QEMU's default VGA, so ask for it: it lands at 00:01.0 and is the guest's
        // console GPU (boot_vga=1), which makes 01:00.0 a secondary GPU (boot_vga=0) as on a passthrough host.
        "-vga", "std",
        "-display", "none",
        ...(o.boot === "grub" || o.boot === "sdboot"
            ? [
                  // UEFI: OVMF's code read-only, a per-run copy of its variable store, the ESP as the second disk.
                  "-drive", `if=pflash,format=raw,unit=0,readonly=on,file=${OVMF_CODE}`,
                  "-drive", `if=pflash,format=raw,unit=1,file=${path.join(o.runDir, "OVMF_VARS.fd")}`,
                  "-drive", `file=${o.boot === "grub" ? o.image.espGrub : o.image.espSdboot},if=none,id=esp,format=raw,snapshot=on`,
                  "-device", "virtio-blk-pci,drive=esp,addr=0x4",
              ]
            : [
                  "-kernel", o.image.kernel,
                  "-initrd", o.image.initrd,
                  "-append", "root=/dev/vda rw console=ttyS0 intel_iommu=on iommu=pt net.ifnames=0 panic=-1",
              ]),
        "-drive", `file=${o.image.disk},if=none,id=disk0,format=raw,snapshot=on`,
        "-device", "virtio-blk-pci,drive=disk0,addr=0x3",
        // restrict=on: the guest reaches nothing outside; hostfwd on loopback only.
        "-netdev", `user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:${o.port}-:22`,
        "-device", `virtio-net-pci,netdev=n0,mac=${LAB_MAC},addr=0x2`,
        "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=0x10.0,multifunction=on",
        "-device", "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,addr=0x10.1",
        "-device", "pcie-root-port,id=rp3,bus=pcie.0,chassis=3,addr=0x10.2",
        "-device", "VGA,id=gpu0,bus=rp1,addr=00.0,multifunction=on",
        "-device", "intel-hda,id=gpu0-audio,bus=rp1,addr=00.1",
        "-device", "hda-output,bus=gpu0-audio.0,audiodev=snd0",
        "-audiodev", "none,id=snd0",
        "-device", "edu,id=edu0,bus=rp2,addr=00.0",
        "-device", "nvme-subsys,id=ss0,nqn=lab",
        "-device", "nvme,id=nvme0,serial=lab0001,subsys=ss0,bus=rp3,addr=00.0,sriov_max_vfs=4,sriov_vq_flexible=8,sriov_vi_flexible=4",
        "-serial", `file:${path.join(o.runDir, "console.log")}`,
        "-qmp", `unix:${path.join(o.runDir, "qmp.sock")},server=on,wait=off`,
        "-pidfile", path.join(o.runDir, "qemu.pid"),
        "-daemonize",
    ];
}

class BootedLab extends LabClient implements LabVm {
    constructor(st: LabRunState, readonly image: LabImage, readonly bootMs: number) {
        super(st);
    }

    async stop(): Promise<void> {
        const deadline = Date.now() + 20_000;
        if (isAlive(this.pid)) {
            await this.ssh(["systemctl", "poweroff"], { timeoutMs: 10_000 }).catch(() => undefined);
            while (isAlive(this.pid) && Date.now() < deadline) await sleep(200);
        }
        if (isAlive(this.pid)) {
            await this.qmp("quit").catch(() => undefined);
            const quitDeadline = Date.now() + 2_000;
            while (isAlive(this.pid) && Date.now() < quitDeadline) await sleep(100);
        }
        killQemu(this.pid, this.runDir);
        this.stopMux();
        live.delete(this.pid);
        fs.rmSync(this.runDir, { recursive: true, force: true });
    }
}

async function startQemu(image: LabImage, accel: Accel, memoryMb: number, runDir: string, boot: LabBoot): Promise<{ pid: number; port: number }> {
    const errLog = path.join(runDir, "qemu.log");
    if (boot !== "kernel") {
        const esp = boot === "grub" ? image.espGrub : image.espSdboot;
        for (const f of [OVMF_CODE, OVMF_VARS, esp]) if (!fs.existsSync(f)) throw new Error(`lab: the ${boot} boot path needs ${f} (apt-get install ovmf; npm run lab:build)`);
        fs.copyFileSync(OVMF_VARS, path.join(runDir, "OVMF_VARS.fd"));
    }
    for (let attempt = 1; ; attempt++) {
        const port = await freePort();
        const args = qemuArgs({ image, accel, memoryMb, port, runDir, boot });
        fs.writeFileSync(path.join(runDir, "qemu.args"), JSON.stringify(args) + "\n");
        // The snapshot=on overlay goes to $TMPDIR: keep it in the run dir.
        const r = await run("qemu-system-x86_64", args, { timeoutMs: 60_000, env: { ...process.env, TMPDIR: runDir } });
        const stderr = r.stderr.toString("utf8");
        fs.writeFileSync(errLog, stderr);
        const pid = readPid(path.join(runDir, "qemu.pid"));
        if (r.code === 0 && pid) return { pid, port };
        if (pid) killQemu(pid, runDir);
        // Someone took the port between our probe and QEMU's bind: try another.
        if (/host forwarding|hostfwd/i.test(stderr) && attempt < 3) continue;
        throw new Error(`lab: qemu-system-x86_64 failed (exit ${r.code}${r.timedOut ? ", timed out" : ""}): ${stderr.trim()}`);
    }
}

async function waitForSsh(vm: LabClient, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    let refused = 0;
    while (Date.now() < deadline) {
        if (!isAlive(vm.pid)) {
            throw new Error(`lab: QEMU exited during boot\n--- last console lines ---\n${tail(vm.consoleLog)}`);
        }
        try {
            const r = await vm.ssh(["true"], { timeoutMs: 15_000 });
            if (r.code === 0) return;
            last = r.stderr.trim();
            // sshd is up and refuses the key: waiting will not help.
            if (/Permission denied/.test(last) && ++refused >= 3) break;
        } catch (e) {
            last = (e as Error).message;
        }
        await sleep(1000);
    }
    throw new Error(
        `lab: no ssh on 127.0.0.1:${vm.connection.port} after ${Math.round((Date.now() - deadline + timeoutMs) / 1000)} s (last: ${last})\n` +
            `--- last ${CONSOLE_TAIL_LINES} console lines (${vm.consoleLog}) ---\n${tail(vm.consoleLog)}`,
    );
}

/** Boots a lab VM and waits for SSH. Throws if the image is missing (see findLabImage for a soft check). */
export async function bootLab(opts: { memoryMb?: number; accel?: Accel; boot?: LabBoot; log?: (msg: string) => void } = {}): Promise<LabVm> {
    const found = findLabImage();
    if ("skip" in found) throw new Error(`lab unavailable: ${found.skip}`);
    const image = found;
    const log = opts.log ?? (() => undefined);
    installGuards();
    for (const d of killStaleLabs()) log(`killed stale lab VM ${d}`);

    let accel: Accel;
    if (opts.accel) accel = opts.accel;
    else {
        const c = await chooseAccel(image);
        accel = c.accel;
        log(`accel ${accel} (${c.detail})`);
    }
    try {
        return await bootOnce(image, accel, opts.memoryMb ?? 3072, log, opts.boot ?? "kernel");
    } catch (e) {
        if (accel !== "kvm" || opts.accel || process.env.PULUMI_VFIO_LAB_ACCEL) throw e;
        // The probe passed but this kernel does not boot under KVM here: remember, and fall back to TCG.
        recordProbe(image, false, `KVM boot failed: ${(e as Error).message.split("\n")[0]}`);
        log("KVM boot failed; retrying with TCG");
        return bootOnce(image, "tcg", opts.memoryMb ?? 3072, log, opts.boot ?? "kernel");
    }
}

async function bootOnce(image: LabImage, accel: Accel, memoryMb: number, log: (msg: string) => void, boot: LabBoot): Promise<LabVm> {
    fs.mkdirSync(runRoot(), { recursive: true, mode: 0o700 });
    const runDir = fs.mkdtempSync(path.join(runRoot(), "run-"));
    const owner: Owner = { ownerPid: process.pid, startedAt: Date.now() };
    fs.writeFileSync(path.join(runDir, "owner.json"), JSON.stringify(owner) + "\n");
    const privateKey = fs.readFileSync(image.privateKeyPath, "utf8");
    const keyPath = path.join(runDir, "id_ed25519");
    fs.writeFileSync(keyPath, privateKey, { mode: 0o600 });

    const t0 = Date.now();
    let pid = 0;
    try {
        const started = await startQemu(image, accel, memoryMb, runDir, boot);
        pid = started.pid;
        live.set(pid, runDir);
        startWatchdog(pid);
        const st: LabRunState = {
            connection: { host: "127.0.0.1", port: started.port, user: "root", privateKey, hostKey: "" },
            keyPath,
            pid,
            runDir,
            accel,
            qmpSocket: path.join(runDir, "qmp.sock"),
            consoleLog: path.join(runDir, "console.log"),
            kernelVersion: image.kernelVersion,
            imageDir: image.dir,
            bootMs: 0,
        };
        log(`qemu pid ${pid}, ssh 127.0.0.1:${started.port}, run dir ${runDir}`);
        const client = new LabClient(st);
        await waitForSsh(client, SSH_BOOT_TIMEOUT_MS);
        // The harness's own ssh does not check the key (a VM booted here a moment ago, on loopback); the SSH host
        // under test gets it as `hostKey` and checks it.
        const hk = await client.ssh(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]);
        const hostKey = hk.stdout.trim().split(/\s+/).slice(0, 2).join(" ");
        if (hk.code !== 0 || !hostKey.startsWith("ssh-ed25519 AAAA")) throw new Error(`lab: cannot read the guest's host key: ${hk.stderr.trim() || hk.stdout.trim()}`);
        st.connection.hostKey = hostKey;
        st.bootMs = Date.now() - t0;
        const vm = new BootedLab(st, image, st.bootMs);
        await vm.ensureMux();
        return vm;
    } catch (e) {
        if (pid) {
            killQemu(pid, runDir);
            killMuxMaster(runDir);
            live.delete(pid);
        }
        fs.rmSync(runDir, { recursive: true, force: true });
        throw e;
    }
}

/** Kills a lab VM from its state, without asking the guest (teardown when the LabVm object is out of reach). */
export function killLab(st: LabRunState): void {
    killQemu(st.pid, st.runDir);
    killMuxMaster(st.runDir);
    live.delete(st.pid);
    fs.rmSync(st.runDir, { recursive: true, force: true });
}

/** A handle on a VM booted by another process (jest globalSetup), from its state. */
export function labHandleFromState(st: LabRunState): LabClient {
    return new LabClient(st);
}
