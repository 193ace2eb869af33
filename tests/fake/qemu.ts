/**
 * The fake machine's QEMU: `qemu-system-x86_64 ... -daemonize -pidfile F -qmp unix:S,server=on,wait=off` run
 * through an exec op starts a fake VM process that checks its devices the way QEMU does (with QEMU's messages),
 * holds what it opens (/dev/vfio/N, /dev/kvmfrN, shared-memory files), writes its pidfile, and answers QMP on an
 * in-memory socket (see FakeHost.openUnixSocket). Around it, the userland a VM host has: kill, taskset, cp, chmod,
 * systemctl, /proc/<pid>, hugepages (/proc/meminfo, /proc/mounts, /sys/kernel/mm/hugepages), /dev/kvm, `--version`.
 *
 * Behaviour modelled on QEMU 7.2 and the lab (LAB.md):
 * - vfio-pci: `/dev/vfio/N` missing → "failed to open /dev/vfio/N"; a member on a host driver → "group N is not
 *   viable"; the group open in another process → EBUSY;
 * - memory-backend-file at a path that does not exist creates a regular file there — the "QEMU started before
 *   the kvmfr module" case Looking Glass warns about; an existing non-empty file smaller than `size` is refused;
 * - `system_powerdown` is only a request: a guest without an OS (no disk) ignores it; `quit` exits at once;
 *   SIGTERM exits cleanly (pidfile removed), SIGKILL leaves the pidfile and socket behind.
 */
import { Duplex, PassThrough } from "stream";
import { ExecResult, FakeHang, FakeKernel, FakeNode, FakeSession, FakeSubsystem } from "./kernel";
import { pci } from "./pci";
import { kvmfr } from "./kvmfr";

export interface FakeQemuPciDevice {
    bus: number;
    slot: number;
    function: number;
    vendor: number;
    device: number;
    class: number;
    qdevId: string;
    driver?: string;
    /** Secondary bus number of a root port. */
    secondary?: number;
}

export interface FakeQemuProcess {
    pid: number;
    argv: string[];
    name: string;
    qmpSocket?: string;
    pidFile?: string;
    status: string;
    /** Paths the process holds open. */
    holds: string[];
    /** A guest OS that answers ACPI powerdown (the fake says: it has a disk). */
    answersPowerdown: boolean;
    /** QMP accepts connections but never answers (a wedged QEMU). */
    hung: boolean;
    vcpus: { index: number; tid: number; affinity: string }[];
    pciDevices: FakeQemuPciDevice[];
}

export interface FakeQemuState {
    processes: Record<string, FakeQemuProcess>;
    /** /dev/kvm works (the lab's nested KVM does not: TCG there). */
    kvm: boolean;
    cpus: number;
    /** The 2 MiB pool (the default size: meminfo's Hugepagesize). */
    hugepages: { total: number; free: number };
    /** The 1 GiB pool (hugepagesz=1G hugepages=N on the kernel command line). */
    gigantic: { total: number; free: number };
    /** The page size of the hugetlbfs mounted at /dev/hugepages (systemd's dev-hugepages.mount), null: not mounted. */
    hugetlbfsPageKb: 2048 | 1048576 | null;
    /** `qemu-system-x86_64` is installed (on PATH). */
    installed: boolean;
    nextPid: number;
    /** Sizes of regular files QEMU (or a test) made as shared memory; fake files hold text, not megabytes. */
    fileSizes: Record<string, number>;
    units: Record<string, boolean>;
    /** Modes set with chmod on directories (the fake's plain directories have none of their own). */
    dirModes: Record<string, number>;
    /** argv of every QEMU start, for assertions. */
    started: string[][];
}

export const QEMU_COMM = "qemu-system-x86";
const MiB = 1024 * 1024;

export function qemu(k: FakeKernel): FakeQemuState {
    return k.ext<FakeQemuState>("qemu", () => ({
        processes: {},
        kvm: true,
        cpus: 4,
        hugepages: { total: 0, free: 0 },
        gigantic: { total: 0, free: 0 },
        hugetlbfsPageKb: 2048,
        installed: true,
        nextPid: 4000,
        fileSizes: {},
        units: {},
        dirModes: {},
        started: [],
    }));
}

/** The pool the /dev/hugepages mount draws from. */
function hugepagePool(q: FakeQemuState): { total: number; free: number } {
    return q.hugetlbfsPageKb === 1048576 ? q.gigantic : q.hugepages;
}

/** Open QMP connections in this process, by pid, so a process exit closes them as the real socket would. */
const connections = new Map<number, Set<PassThrough>>();

// ------------------------------------------------------------------------------------------------ argv

/** QEMU's option syntax: `a,b=c,d=e,,f` → {"": "a", b: "c", d: "e,f"}. */
export function parseQemuOpts(s: string): Record<string, string> {
    const out: Record<string, string> = {};
    const parts: string[] = [];
    let cur = "";
    for (let i = 0; i < s.length; i++) {
        if (s[i] === "," && s[i + 1] === ",") {
            cur += ",";
            i++;
        } else if (s[i] === ",") {
            parts.push(cur);
            cur = "";
        } else cur += s[i];
    }
    parts.push(cur);
    parts.forEach((p, i) => {
        const eq = p.indexOf("=");
        if (eq < 0 && i === 0) out[""] = p;
        else if (eq < 0) out[p] = "on";
        else out[p.slice(0, eq)] = p.slice(eq + 1);
    });
    return out;
}

const WITH_VALUE = new Set(["-name", "-uuid", "-machine", "-M", "-cpu", "-smp", "-m", "-object", "-drive", "-device", "-netdev", "-display", "-serial", "-pidfile", "-qmp", "-accel", "-chardev", "-mon", "-vga", "-boot", "-monitor", "-audiodev", "-global", "-cdrom", "-kernel", "-initrd", "-append", "-smbios", "-rtc", "-msg"]);
const FLAGS = new Set(["-nodefaults", "-daemonize", "-no-shutdown", "-S", "-enable-kvm", "-no-reboot", "-nographic", "-no-user-config"]);

function sizeBytes(v: string): number {
    const m = /^(\d+)([KMGT]?)B?$/i.exec(v.trim());
    if (!m) return NaN;
    const unit = { "": 1, K: 1024, M: MiB, G: 1024 * MiB, T: 1024 * 1024 * MiB }[m[2].toUpperCase() as "" | "K" | "M" | "G" | "T"];
    return Number(m[1]) * unit;
}

const hex = (v: string) => parseInt(v, 16);

interface StartPlan {
    proc: FakeQemuProcess;
    createFiles: { path: string; size: number }[];
}

class QemuFailure extends Error {}

function fail(msg: string): never {
    throw new QemuFailure(msg);
}

function parentExists(k: FakeKernel, path: string): boolean {
    const parent = path.slice(0, path.lastIndexOf("/")) || "/";
    const n = k.node(parent);
    return !!n && n.kind === "dir";
}

function fileSize(k: FakeKernel, path: string): number {
    const f = k.state.files[path];
    if (!f) return 0;
    return qemu(k).fileSizes[path] ?? Buffer.byteLength(f.data);
}

/** Validate the command line against the machine, as QEMU does at startup; throws QemuFailure with QEMU's message. */
function plan(k: FakeKernel, argv: string[]): StartPlan {
    const q = qemu(k);
    const s = pci(k);
    const opts: [string, string | undefined][] = [];
    for (let i = 1; i < argv.length; i++) {
        const a = argv[i];
        if (FLAGS.has(a)) opts.push([a, undefined]);
        else if (WITH_VALUE.has(a)) {
            if (i + 1 >= argv.length) fail(`qemu-system-x86_64: ${a} requires an argument`);
            opts.push([a, argv[++i]]);
        } else fail(`qemu-system-x86_64: ${a}: invalid option`);
    }
    const all = (o: string) => opts.filter(([n]) => n === o).map(([, v]) => v ?? "");
    const one = (o: string) => all(o).pop();
    if (!opts.some(([n]) => n === "-daemonize")) fail("fake QEMU: only -daemonize is modelled");

    const pid = q.nextPid;
    const proc: FakeQemuProcess = { pid, argv, name: one("-name") ?? "", status: "running", holds: [], answersPowerdown: false, hung: false, vcpus: [], pciDevices: [] };
    const createFiles: { path: string; size: number }[] = [];
    const machine = parseQemuOpts(one("-machine") ?? one("-M") ?? "pc");
    const accel = machine.accel ?? parseQemuOpts(one("-accel") ?? "tcg")[""] ?? "tcg";
    if (accel === "kvm" && !q.kvm) fail("Could not access KVM kernel module: No such file or directory\nqemu-system-x86_64: failed to initialize kvm: No such file or directory");
    if (!/^(q35|pc-q35-[\d.]+|pc)$/.test(machine[""] ?? "")) fail(`qemu-system-x86_64: unsupported machine type "${machine[""]}"\nUse -machine help to list supported machines`);

    const smp = parseQemuOpts(one("-smp") ?? "1");
    const ncpu = Number(smp[""] ?? 1);
    const memBytes = sizeBytes(one("-m") ?? "128M");

    for (const o of all("-object")) {
        const p = parseQemuOpts(o);
        if (p[""] !== "memory-backend-file") continue;
        const path = p["mem-path"];
        const size = sizeBytes(p.size ?? "0");
        if (path === "/dev/hugepages" && q.hugetlbfsPageKb !== null) {
            const pool = hugepagePool(q);
            const pages = Math.ceil(size / (q.hugetlbfsPageKb * 1024));
            if (pool.free < pages) fail(`qemu-system-x86_64: unable to map backing store for guest RAM: Cannot allocate memory`);
            pool.free -= pages;
            continue;
        }
        const n = k.node(path);
        if (!n) {
            if (!parentExists(k, path)) fail(`qemu-system-x86_64: -object ${o}: can't open backing store ${path} for guest RAM: No such file or directory`);
            createFiles.push({ path, size });
        } else if (n.kind === "char") {
            const m = /^\/dev\/kvmfr(\d)$/.exec(path);
            const have = m ? (kvmfr(k).sizes[Number(m[1])] ?? 0) * MiB : Infinity;
            if (size > have) fail(`qemu-system-x86_64: -object ${o}: unable to map backing store for guest RAM: Invalid argument`);
        } else if (n.kind === "file") {
            const cur = fileSize(k, path);
            if (cur > 0 && cur < size) fail(`qemu-system-x86_64: backing store size 0x${cur.toString(16)} does not match 'size' option 0x${size.toString(16)}`);
            if (cur === 0) createFiles.push({ path, size });
        } else fail(`qemu-system-x86_64: -object ${o}: can't open backing store ${path} for guest RAM: Is a directory`);
        proc.holds.push(path);
    }

    for (const d of all("-drive")) {
        const p = parseQemuOpts(d);
        const file = p.file;
        if (file && !k.node(file)) fail(`qemu-system-x86_64: -drive ${d}: Could not open '${file}': No such file or directory`);
        if (p.media !== "cdrom" && p.if !== "pflash" && file) proc.answersPowerdown = true;
    }

    // PCI: q35's host bridge and ICH9 functions, then every -device in order (at its addr=, else the lowest free slot).
    let driverNow: string | undefined;
    const dev = (bus: number, slot: number, f: number, vendor: number, device: number, cls: number, qdevId: string, secondary?: number) =>
        proc.pciDevices.push({ bus, slot, function: f, vendor, device, class: cls, qdevId, secondary, driver: driverNow });
    dev(0, 0, 0, 0x8086, 0x29c0, 0x0600, "");
    dev(0, 0x1f, 0, 0x8086, 0x2918, 0x0601, "");
    dev(0, 0x1f, 2, 0x8086, 0x2922, 0x0106, "");
    dev(0, 0x1f, 3, 0x8086, 0x2930, 0x0c05, "");
    // Every bus's devfn → the device there (its driver, id and multifunction bit), for QEMU's placement rules.
    const placed = new Map<number, Map<number, { what: string; multifunction: boolean }>>();
    const ports = new Map<string, number>();
    let nextBus = 1;
    const vfioOpen = new Set<number>();
    for (const d of all("-device")) {
        const p = parseQemuOpts(d);
        const driver = p[""];
        if (driver === "ide-hd" || driver === "ide-cd") {
            // On q35's built-in AHCI (00:1f.2), not a PCI device of its own.
            if (p.bus && !/^ide\.[0-5]$/.test(p.bus)) fail(`qemu-system-x86_64: -device ${d}: Bus '${p.bus}' not found`);
            continue;
        }
        let bus = 0;
        if (p.bus && p.bus !== "pcie.0") {
            if (!ports.has(p.bus)) fail(`qemu-system-x86_64: -device ${d}: Bus '${p.bus}' not found`);
            bus = ports.get(p.bus)!;
        }
        const onBus = placed.get(bus) ?? new Map<number, { what: string; multifunction: boolean }>();
        placed.set(bus, onBus);
        if (bus === 0 && onBus.size === 0) for (const devfn of [0, 0x1f * 8, 0x1f * 8 + 2, 0x1f * 8 + 3]) onBus.set(devfn, { what: "ich9", multifunction: devfn >= 0x1f * 8 });
        let slot: number;
        let func = 0;
        if (p.addr !== undefined) {
            const [sl, f] = p.addr.replace(/^0x/i, "").split(".");
            slot = hex(sl);
            func = Number(f ?? 0);
        } else {
            // QEMU's pci_bus_devfn_available: the lowest slot whose function 0 is free.
            slot = -1;
            for (let s2 = bus === 0 ? 1 : 0; s2 < 32 && slot < 0; s2++) if (!onBus.has(s2 * 8)) slot = s2;
            if (slot < 0) fail(`qemu-system-x86_64: -device ${d}: PCI: no slot/function available for ${driver}, all in use`);
        }
        if (bus !== 0 && slot !== 0) fail(`qemu-system-x86_64: -device ${d}: PCI: slot ${slot} is not valid for ${driver}, parent device only allows plugging into slot 0.`);
        const devfn = slot * 8 + func;
        const taken = onBus.get(devfn);
        if (taken) fail(`qemu-system-x86_64: -device ${d}: PCI: slot ${slot.toString(16)} function ${func} not available for ${driver}, in use by ${taken.what}`);
        const multifunction = p.multifunction === "on";
        // QEMU's pci_init_multifunction: function 0 must say multifunction=on before a function > 0 joins it.
        const f0 = onBus.get(slot * 8);
        if (func > 0 && f0 && !f0.multifunction) fail(`qemu-system-x86_64: -device ${d}: PCI: single function device can't be populated in function ${slot.toString(16)}.${func}`);
        if (func === 0 && !multifunction && [...onBus.keys()].some((k2) => k2 >> 3 === slot && (k2 & 7) > 0)) fail(`qemu-system-x86_64: -device ${d}: PCI: ${slot.toString(16)}.0 indicates single function, but ${slot.toString(16)}.x is already populated.`);
        onBus.set(devfn, { what: `${driver},id=${p.id ?? ""}`, multifunction });
        const id = p.id ?? "";
        driverNow = driver;
        switch (driver) {
            case "pcie-root-port": {
                const sec = nextBus++;
                if (id) ports.set(id, sec);
                dev(bus, slot, func, 0x1b36, 0x000c, 0x0604, id, sec);
                break;
            }
            case "vfio-pci": {
                if (p.host) {
                    const bdf = p.host.length === 7 ? `0000:${p.host}` : p.host;
                    const hd = s.devices[bdf];
                    if (!hd) fail(`qemu-system-x86_64: -device ${d}: vfio ${bdf}: no such host device: No such file or directory`);
                    const g = hd.group;
                    const groupDev = `/dev/vfio/${g}`;
                    if (!k.node(groupDev)) fail(`qemu-system-x86_64: -device ${d}: vfio ${bdf}: failed to open ${groupDev}: No such file or directory`);
                    const members = Object.values(s.devices).filter((x) => x.group === g);
                    const bad = members.filter((x) => x.driver && !/vfio/.test(x.driver) && x.driver !== "pci-stub" && x.driver !== "pcieport");
                    if (bad.length) fail(`qemu-system-x86_64: -device ${d}: vfio ${bdf}: group ${g} is not viable\nPlease ensure all devices within the iommu_group are bound to their vfio bus driver.`);
                    if (!hd.driver || !/vfio/.test(hd.driver)) {
                        fail(`qemu-system-x86_64: -device ${d}: vfio ${bdf}: error getting device from group ${g}: Invalid argument\nVerify all devices in group ${g} are bound to vfio-<bus> or pci-stub and not already in use`);
                    }
                    if (!vfioOpen.has(g) && k.openers(groupDev).length) fail(`qemu-system-x86_64: -device ${d}: vfio ${bdf}: failed to open ${groupDev}: Device or resource busy`);
                    if (!vfioOpen.has(g)) proc.holds.push(groupDev);
                    vfioOpen.add(g);
                    dev(bus, slot, func, hex(hd.vendor.slice(2)), hex(hd.device.slice(2)), hex(hd.class.slice(2, 6)), id);
                } else if (p.sysfsdev) {
                    const node = k.node(p.sysfsdev);
                    const uuid = p.sysfsdev.slice(p.sysfsdev.lastIndexOf("/") + 1);
                    if (!node) fail(`qemu-system-x86_64: -device ${d}: vfio ${uuid}: no such host device: No such file or directory`);
                    let groupDev: string | undefined;
                    try {
                        const link = k.readlink(`${p.sysfsdev}/iommu_group`);
                        groupDev = `/dev/vfio/${link.slice(link.lastIndexOf("/") + 1)}`;
                    } catch {
                        groupDev = undefined;
                    }
                    if (groupDev && k.openers(groupDev).length) fail(`qemu-system-x86_64: -device ${d}: vfio ${uuid}: failed to open ${groupDev}: Device or resource busy`);
                    proc.holds.push(groupDev ?? p.sysfsdev);
                    dev(bus, slot, func, 0x1234, 0x1111, 0x0300, id);
                } else fail(`qemu-system-x86_64: -device ${d}: vfio-pci: no host device provided`);
                break;
            }
            case "ivshmem-plain":
                dev(bus, slot, func, 0x1af4, 0x1110, 0x0500, id);
                break;
            case "virtio-blk-pci":
                dev(bus, slot, func, 0x1af4, 0x1001, 0x0100, id);
                break;
            case "virtio-net-pci":
            case "e1000e":
                dev(bus, slot, func, 0x1af4, 0x1000, 0x0200, id);
                break;
            case "nvme":
                dev(bus, slot, func, 0x1b36, 0x0010, 0x0108, id);
                break;
            default:
                dev(bus, slot, func, 0x1234, 0x0001, 0x0000, id);
        }
    }

    if (memBytes > 64 * 1024 * MiB) fail("qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory");
    for (let i = 0; i < ncpu; i++) proc.vcpus.push({ index: i, tid: pid + 1 + i, affinity: `0-${q.cpus - 1}` });

    const pidFile = one("-pidfile");
    if (pidFile && !parentExists(k, pidFile)) fail(`qemu-system-x86_64: cannot create PID file: Cannot open pid file: No such file or directory`);
    proc.pidFile = pidFile;
    const qmp = one("-qmp");
    if (qmp) {
        const m = /^unix:([^,]+)/.exec(qmp);
        if (!m) fail(`qemu-system-x86_64: -qmp ${qmp}: fake QEMU models unix: QMP sockets only`);
        if (!parentExists(k, m[1])) fail(`qemu-system-x86_64: -qmp ${qmp}: Failed to bind socket to ${m[1]}: No such file or directory`);
        proc.qmpSocket = m[1];
    }
    const serial = one("-serial");
    if (serial?.startsWith("file:") && !parentExists(k, serial.slice(5))) fail(`qemu-system-x86_64: -serial ${serial}: Could not open '${serial.slice(5)}': No such file or directory`);
    return { proc, createFiles };
}

function start(k: FakeKernel, argv: string[]): ExecResult {
    const q = qemu(k);
    const hugeBefore = [q.hugepages.free, q.gigantic.free];
    let p: StartPlan;
    try {
        p = plan(k, argv);
    } catch (e) {
        [q.hugepages.free, q.gigantic.free] = hugeBefore;
        if (e instanceof QemuFailure) return { code: 1, stderr: e.message };
        throw e;
    }
    const proc = p.proc;
    q.nextPid += 100;
    q.processes[String(proc.pid)] = proc;
    q.started.push(argv);
    k.state.processes[String(proc.pid)] = QEMU_COMM;
    for (const f of p.createFiles) {
        k.state.files[f.path] = { data: "", mode: 0o644 };
        q.fileSizes[f.path] = f.size;
    }
    for (const h of proc.holds) (k.state.openers[h] ??= []).push(proc.pid);
    if (proc.pidFile) k.state.files[proc.pidFile] = { data: `${proc.pid}\n`, mode: 0o600 };
    if (proc.qmpSocket) k.state.files[proc.qmpSocket] = { data: "", mode: 0o755 };
    const serial = argv[argv.indexOf("-serial") + 1];
    if (argv.includes("-serial") && serial.startsWith("file:")) k.state.files[serial.slice(5)] = { data: "", mode: 0o644 };
    return { code: 0 };
}

/** The process ends: what it held is released; a clean exit removes the pidfile, SIGKILL leaves pidfile and socket. */
export function exitProcess(k: FakeKernel, pid: number, clean: boolean): void {
    const q = qemu(k);
    const p = q.processes[String(pid)];
    if (!p) return;
    delete q.processes[String(pid)];
    k.release(pid);
    const huge = p.argv.find((a) => a.includes("mem-path=/dev/hugepages"));
    if (huge && q.hugetlbfsPageKb !== null) hugepagePool(q).free += Math.ceil(sizeBytes(parseQemuOpts(huge).size ?? "0") / (q.hugetlbfsPageKb * 1024));
    if (clean) {
        if (p.pidFile) delete k.state.files[p.pidFile];
        if (p.qmpSocket) delete k.state.files[p.qmpSocket];
    }
    for (const c of connections.get(pid) ?? []) c.end();
    connections.delete(pid);
}

// ------------------------------------------------------------------------------------------------ userland

function kill(k: FakeKernel, args: string[]): ExecResult {
    let sig = "TERM";
    const pids: string[] = [];
    for (let i = 0; i < args.length; i++) {
        const a = args[i];
        if (a === "-s") sig = args[++i] ?? "";
        else if (a.startsWith("-")) sig = a.slice(1);
        else pids.push(a);
    }
    sig = sig.replace(/^SIG/, "");
    if (sig === "9") sig = "KILL";
    if (sig === "15") sig = "TERM";
    for (const pid of pids) {
        if (!k.state.processes[pid]) return { code: 1, stderr: `bash: kill: (${pid}) - No such process` };
        if (sig === "0") continue;
        const p = qemu(k).processes[pid];
        if (p) exitProcess(k, Number(pid), sig !== "KILL");
        else k.release(Number(pid));
    }
    return { code: 0 };
}

function findVcpu(k: FakeKernel, tid: number): { proc: FakeQemuProcess; vcpu: FakeQemuProcess["vcpus"][number] } | undefined {
    for (const proc of Object.values(qemu(k).processes)) {
        const vcpu = proc.vcpus.find((v) => v.tid === tid);
        if (vcpu) return { proc, vcpu };
    }
    return undefined;
}

function taskset(k: FakeKernel, args: string[]): ExecResult {
    // taskset -p -c <list> <tid>  (or -pc)
    const flags = args.filter((a) => a.startsWith("-")).join("");
    const words = args.filter((a) => !a.startsWith("-"));
    if (!flags.includes("p") || !flags.includes("c") || words.length !== 2) return { code: 1, stderr: "taskset: fake supports only -p -c <list> <pid>" };
    const [list, tidText] = words;
    const hit = findVcpu(k, Number(tidText));
    if (!hit) return { code: 1, stderr: `taskset: failed to get pid ${tidText}'s affinity: No such process` };
    const cpus = list.split(",").flatMap((r) => {
        const [a, b] = r.split("-").map(Number);
        return b === undefined ? [a] : Array.from({ length: b - a + 1 }, (_, i) => a + i);
    });
    if (cpus.some((c) => !Number.isInteger(c) || c < 0 || c >= qemu(k).cpus)) return { code: 1, stderr: `taskset: failed to set pid ${tidText}'s affinity: Invalid argument` };
    const before = hit.vcpu.affinity;
    hit.vcpu.affinity = list;
    return { code: 0, stdout: `pid ${tidText}'s current affinity list: ${before}\npid ${tidText}'s new affinity list: ${list}\n` };
}

function systemctl(k: FakeKernel, args: string[]): ExecResult {
    const q = qemu(k);
    const [verb, unit] = args.filter((a) => !a.startsWith("-"));
    switch (verb) {
        case "daemon-reload":
            return { code: 0 };
        case "enable":
            if (!k.state.files[`/etc/systemd/system/${unit}`]) return { code: 1, stderr: `Failed to enable unit: Unit file ${unit} does not exist.` };
            q.units[unit] = true;
            return { code: 0 };
        case "disable":
            delete q.units[unit];
            return { code: 0 };
        case "is-enabled":
            return q.units[unit] ? { code: 0, stdout: "enabled\n" } : { code: 1, stdout: k.state.files[`/etc/systemd/system/${unit}`] ? "disabled\n" : "not-found\n" };
        default:
            return { code: 1, stderr: `fake systemctl: ${verb} is not modelled` };
    }
}

const dirNode = (list: () => string[]): FakeNode => ({ kind: "dir", list });
const fileNode = (read: () => string): FakeNode => ({ kind: "file", read, mode: 0o444 });

export const qemuSubsystem: FakeSubsystem = {
    resolve(k, path) {
        const q = qemu(k);
        if (path === "/dev/kvm") return q.kvm ? { kind: "char", major: 10, minor: 232, mode: 0o660, gid: 104 } : undefined;
        if (path === "/proc/meminfo") {
            return fileNode(() => `MemTotal:       8000000 kB\nHugePages_Total: ${q.hugepages.total}\nHugePages_Free: ${q.hugepages.free}\nHugePages_Rsvd:        0\nHugepagesize:       2048 kB\n`);
        }
        // hugetlbfs_show_options always prints pagesize= (fs/hugetlbfs/inode.c): 2M, or 1024M for 1 GiB pages.
        if (path === "/proc/mounts") {
            const hp = q.hugetlbfsPageKb === null ? "" : `hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=${q.hugetlbfsPageKb / 1024}M 0 0\n`;
            return fileNode(() => `sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\nproc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\ntmpfs /run tmpfs rw,nosuid,nodev,mode=755 0 0\n${hp}`);
        }
        const pool = /^\/sys\/kernel\/mm\/hugepages\/hugepages-(2048|1048576)kB\/(free|resv|nr)_hugepages$/.exec(path);
        if (pool) {
            const p = pool[1] === "2048" ? q.hugepages : q.gigantic;
            return fileNode(() => `${pool[2] === "free" ? p.free : pool[2] === "nr" ? p.total : 0}\n`);
        }
        if (path === "/sys/devices/system/cpu/online") return fileNode(() => `0-${q.cpus - 1}\n`);
        const f = k.state.files[path];
        if (f && q.fileSizes[path] !== undefined) return { kind: "file", read: () => f.data, mode: f.mode, size: q.fileSizes[path] };
        const m = /^\/proc\/(\d+)(?:\/(.*))?$/.exec(path);
        if (!m) return undefined;
        const proc = q.processes[m[1]];
        if (!proc) return undefined;
        const rest = m[2];
        if (rest === undefined) return dirNode(() => ["cmdline", "comm", "status", "task"]);
        if (rest === "cmdline") return fileNode(() => proc.argv.join("\0") + "\0");
        if (rest === "status") return fileNode(() => `Name:\t${QEMU_COMM}\nState:\tS (sleeping)\nPid:\t${proc.pid}\nCpus_allowed_list:\t0-${q.cpus - 1}\n`);
        if (rest === "task") return dirNode(() => [String(proc.pid), ...proc.vcpus.map((v) => String(v.tid))]);
        const t = /^task\/(\d+)(?:\/(status))?$/.exec(rest);
        if (t) {
            const v = proc.vcpus.find((x) => String(x.tid) === t[1]);
            const aff = v?.affinity ?? `0-${q.cpus - 1}`;
            if (!v && t[1] !== String(proc.pid)) return undefined;
            return t[2] ? fileNode(() => `Name:\t${v ? `CPU ${v.index}/KVM` : QEMU_COMM}\nPid:\t${t[1]}\nCpus_allowed_list:\t${aff}\n`) : dirNode(() => ["status"]);
        }
        return undefined;
    },
    extraEntries(k, d) {
        if (d === "/proc") return Object.keys(qemu(k).processes);
        if (d === "/dev") return qemu(k).kvm ? ["kvm"] : [];
        return [];
    },
    exec(k, argv) {
        const [cmd, ...rest] = argv;
        const q = qemu(k);
        if (/(^|\/)qemu-system-x86_64$/.test(cmd)) {
            if (!q.installed) return { code: 127, stderr: `bash: line 1: ${cmd}: command not found` };
            if (rest.length === 1 && rest[0] === "--version") return { code: 0, stdout: "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n" };
            return start(k, argv);
        }
        if (cmd === "kill") return kill(k, rest);
        if (cmd === "taskset") return taskset(k, rest);
        // tail -s S --pid=PID -f /dev/null returns once PID has exited; a process that does not exit keeps it
        // waiting until the exec's time limit (ETIMEDOUT), as the real tail is killed then.
        if (cmd === "tail" && rest.some((a) => a.startsWith("--pid="))) {
            const pid = rest.find((a) => a.startsWith("--pid="))!.slice("--pid=".length);
            if (k.state.processes[pid]) throw new FakeHang(`tail --pid=${pid}: process ${pid} is still running`);
            return { code: 0 };
        }
        if (cmd === "systemctl") return systemctl(k, rest);
        if (cmd === "cp") {
            const words = rest.filter((a) => a !== "--");
            const [src, dst] = words;
            const f = k.state.files[src];
            if (!f) return { code: 1, stderr: `cp: cannot stat '${src}': No such file or directory` };
            if (!parentExists(k, dst)) return { code: 1, stderr: `cp: cannot create regular file '${dst}': No such file or directory` };
            k.state.files[dst] = { data: f.data, mode: f.mode & 0o755 };
            return { code: 0 };
        }
        if (cmd === "rmdir") {
            const dir = rest.filter((a) => !a.startsWith("-"))[0];
            if (!k.state.dirs.includes(dir)) return { code: 1, stderr: `rmdir: failed to remove '${dir}': No such file or directory` };
            if (k.list(dir).length) return rest.includes("--ignore-fail-on-non-empty") ? { code: 0 } : { code: 1, stderr: `rmdir: failed to remove '${dir}': Directory not empty` };
            k.state.dirs = k.state.dirs.filter((d) => d !== dir);
            delete q.dirModes[dir];
            return { code: 0 };
        }
        if (cmd === "chmod" && rest.length === 2) {
            if (k.state.dirs.includes(rest[1])) {
                q.dirModes[rest[1]] = parseInt(rest[0], 8);
                return { code: 0 };
            }
            const f = k.state.files[rest[1]];
            if (!f) return { code: 1, stderr: `chmod: cannot access '${rest[1]}': No such file or directory` };
            f.mode = parseInt(rest[0], 8);
            return { code: 0 };
        }
        return undefined;
    },
    connect(k, path, session) {
        const proc = Object.values(qemu(k).processes).find((p) => p.qmpSocket === path);
        if (!proc || !k.state.files[path]) return undefined;
        return qmpEndpoint(proc.pid, session);
    },
};

// ------------------------------------------------------------------------------------------------ QMP

function pciTree(proc: FakeQemuProcess): unknown[] {
    const onBus = (bus: number): unknown[] =>
        proc.pciDevices
            .filter((d) => d.bus === bus)
            .map((d) => {
                const out: Record<string, unknown> = {
                    bus: d.bus,
                    slot: d.slot,
                    function: d.function,
                    class_info: { class: d.class },
                    id: { vendor: d.vendor, device: d.device },
                    qdev_id: d.qdevId,
                    regions: [],
                };
                // QEMU lists a bridge's devices only once the guest firmware has programmed its secondary bus
                // number; the fake's guest never runs firmware, so behind a root port query-pci shows nothing.
                if (d.secondary !== undefined) out.pci_bridge = { bus: { number: 0, secondary: 0, subordinate: 0 } };
                return out;
            });
    return [{ bus: 0, devices: onBus(0) }];
}

/**
 * One QMP connection to fake QEMU `pid`: greeting, capabilities negotiation, the commands pulumi-vfio uses, and
 * events. The machine is re-read for every command (another process may have changed it) and saved after changes.
 */
function qmpEndpoint(pid: number, session: FakeSession): Duplex {
    const toServer = new PassThrough();
    const toClient = new PassThrough();
    const set = connections.get(pid) ?? new Set<PassThrough>();
    set.add(toClient);
    connections.set(pid, set);
    const send = (o: unknown) => {
        if (!toClient.writableEnded) toClient.write(JSON.stringify(o) + "\r\n");
    };
    const ts = () => {
        const t = Date.now();
        return { seconds: Math.floor(t / 1000), microseconds: (t % 1000) * 1000 };
    };
    const event = (name: string, data: Record<string, unknown> = {}) => send({ event: name, data, timestamp: ts() });
    let negotiated = false;
    send({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: "pulumi-vfio fake" }, capabilities: ["oob"] } });

    const handle = (msg: any) => {
        const k = session.kernel();
        const proc = qemu(k).processes[String(pid)];
        if (!proc) return toClient.end();
        if (proc.hung) return;
        const id = msg.id;
        const reply = (ret: unknown) => send(id === undefined ? { return: ret } : { return: ret, id });
        const error = (cls: string, desc: string) => send(id === undefined ? { error: { class: cls, desc } } : { error: { class: cls, desc }, id });
        const cmd = msg.execute;
        if (!negotiated) {
            if (cmd !== "qmp_capabilities") return error("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'");
            negotiated = true;
            return reply({});
        }
        switch (cmd) {
            case "qmp_capabilities":
                return error("CommandNotFound", "Capabilities negotiation is already complete, command ignored");
            case "query-status":
                return reply({ status: proc.status, singlestep: false, running: proc.status === "running" });
            case "query-name":
                return reply(proc.name ? { name: proc.name } : {});
            case "query-pci":
                return reply(pciTree(proc));
            case "qom-list": {
                if (msg.arguments?.path !== "/machine/peripheral") return error("DeviceNotFound", `Device '${msg.arguments?.path}' not found`);
                const ids = proc.pciDevices.filter((d) => d.qdevId).map((d) => ({ name: d.qdevId, type: `child<${d.driver ?? "device"}>` }));
                return reply([{ name: "type", type: "string" }, ...ids]);
            }
            case "query-cpus-fast":
                return reply(proc.vcpus.map((v) => ({ "cpu-index": v.index, "thread-id": v.tid, "qom-path": `/machine/unattached/device[${v.index}]`, target: "x86_64", props: { "core-id": v.index, "thread-id": 0, "socket-id": 0 } })));
            case "stop":
                proc.status = "paused";
                session.commit(k);
                reply({});
                return event("STOP");
            case "cont":
                proc.status = "running";
                session.commit(k);
                reply({});
                return event("RESUME");
            case "system_powerdown": {
                reply({});
                event("POWERDOWN");
                if (proc.answersPowerdown) {
                    // The guest's ACPI handler shuts the OS down a moment later; QEMU then exits.
                    setTimeout(() => {
                        const k2 = session.kernel();
                        if (!qemu(k2).processes[String(pid)]) return;
                        event("SHUTDOWN", { guest: true, reason: "guest-shutdown" });
                        exitProcess(k2, pid, true);
                        session.commit(k2);
                    }, 30);
                }
                return;
            }
            case "quit":
                reply({});
                event("SHUTDOWN", { guest: false, reason: "host-qmp-quit" });
                exitProcess(k, pid, true);
                session.commit(k);
                return;
            default:
                return error("CommandNotFound", `The command ${cmd} has not been found`);
        }
    };

    let buf = "";
    toServer.on("data", (d: Buffer) => {
        buf += d.toString("utf8");
        for (;;) {
            const nl = buf.indexOf("\n");
            if (nl < 0) break;
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (!line) continue;
            let msg: unknown;
            try {
                msg = JSON.parse(line);
            } catch {
                send({ error: { class: "GenericError", desc: "JSON parse error" } });
                continue;
            }
            handle(msg);
        }
    });
    const client = Duplex.from({ readable: toClient, writable: toServer });
    client.on("close", () => set.delete(toClient));
    return client;
}

/** Test control: the process dies as if killed by SIGKILL (a crash): pidfile and socket stay behind. */
export function crashVm(k: FakeKernel, pid: number): void {
    exitProcess(k, pid, false);
}

/** Attach to a kernel (see extraSubsystems in lab.ts). */
export function addQemu(k: FakeKernel): void {
    k.use(qemuSubsystem);
    for (const d of ["/dev", "/dev/shm", "/dev/hugepages", "/run", "/var/lib", "/etc/systemd/system", "/usr/share/OVMF"]) if (!k.state.dirs.includes(d)) k.state.dirs.push(d);
}
