/**
 * A fake virsh for the fake machine: libvirt's system QEMU driver as `virsh -c qemu:///system` shows it, for the
 * commands PassthroughVm's libvirt backend uses (define, start, shutdown, destroy, undefine --nvram, domstate,
 * dumpxml --inactive, autostart [--disable], resume), with the real answers of Debian 12's libvirt 9.0 (the lab):
 * output lines such as `Domain 'x' defined from f`, failures as exit 1 with `error: ...` lines on stderr
 * (`error: failed to get domain 'x'` for an unknown domain, `Requested operation is not valid: domain is not
 * running`...).
 *
 * What libvirt adds to a definition is added here too, so a read-back is not byte-equal to what was defined: a
 * `<uuid>` (a random one in libvirt; here one per definition, so a redefinition without the domain's UUID is refused
 * as libvirt refuses it), the expanded machine type (q35 → pc-q35-7.2), each hostdev's guest `<address>` and `<alias>`, root
 * port controllers. A start holds each PCI hostdev's /dev/vfio group as QEMU does (managed='no': it fails when a
 * device is not bound to vfio-pci, and libvirt never rebinds); the guest has no OS, so `shutdown` (ACPI) is
 * ignored and only `destroy` stops it.
 */
import { FakeKernel, FakeSubsystem } from "./kernel";

export interface FakeDomain {
    xml: string;
    state: "running" | "paused" | "shut off";
    persistent: boolean;
    pid?: number;
    /** Its QEMU is in D state (a vfio device that will not let go): destroy fails and the process stays. */
    stuck?: boolean;
}

export interface FakeVirsh {
    domains: Record<string, FakeDomain>;
    /** Every virsh argv run, after `-c qemu:///system`. */
    log: string[][];
}

export const virshState = (k: FakeKernel): FakeVirsh => k.state.ext.virsh;
const AUTOSTART = "/etc/libvirt/qemu/autostart";
const err = (...lines: string[]) => ({ code: 1, stderr: lines.map((l) => `error: ${l}`).join("\n") + "\n" });
const noDomain = (name: string) => err(`failed to get domain '${name}'`);

/** What libvirt writes back for a definition: its additions (see the file's comment). */
function normalized(xml: string, id: number): string {
    let x = xml.replace(/<type arch='x86_64' machine='q35'>/, "<type arch='x86_64' machine='pc-q35-7.2'>");
    if (!/<uuid>/.test(x)) x = x.replace(/(<name>[^<]*<\/name>\n)/, `$1  <uuid>6f1d1c8e-0000-4000-8000-${String(id).padStart(12, "0")}</uuid>\n`);
    let slot = 1;
    x = x.replace(/(<hostdev [^>]*>\n(?:\s+<[^h][^\n]*\n)*?)(\s+)<\/hostdev>/g, (_m, body: string, ws: string) => `${body}${ws}  <alias name='hostdev${slot - 1}'/>\n${ws}  <address type='pci' domain='0x0000' bus='0x0${slot++}' slot='0x00' function='0x0'/>\n${ws}</hostdev>`);
    x = x.replace(/(<devices>\n\s+<emulator>[^<]*<\/emulator>\n)/, "$1    <controller type='pci' index='0' model='pcie-root'/>\n");
    return x;
}

function pciSources(xml: string): string[] {
    const out: string[] = [];
    for (const m of xml.matchAll(/<hostdev mode='subsystem' type='pci'[^>]*>\s*<source>\s*<address domain='0x([0-9a-f]+)' bus='0x([0-9a-f]+)' slot='0x([0-9a-f]+)' function='0x([0-7])'\/>/g)) {
        out.push(`${m[1].padStart(4, "0")}:${m[2].padStart(2, "0")}:${m[3].padStart(2, "0")}.${m[4]}`);
    }
    return out;
}

function startDomain(k: FakeKernel, name: string, d: FakeDomain) {
    const groups: string[] = [];
    for (const a of pciSources(d.xml)) {
        let driver = "";
        try {
            driver = k.readlink(`/sys/bus/pci/devices/${a}/driver`);
        } catch {
            driver = "";
        }
        if (!driver.endsWith("/vfio-pci")) return err(`Failed to start domain '${name}'`, `internal error: qemu unexpectedly closed the monitor: qemu-system-x86_64: -device {"driver":"vfio-pci","host":"${a}"}: vfio ${a}: no iommu_group found: No such file or directory`);
        const group = k.readlink(`/sys/bus/pci/devices/${a}/iommu_group`).split("/").pop()!;
        const holders = k.openers(`/dev/vfio/${group}`);
        if (holders.length) return err(`Failed to start domain '${name}'`, `internal error: qemu unexpectedly closed the monitor: qemu-system-x86_64: vfio ${a}: failed to open /dev/vfio/${group}: Device or resource busy`);
        groups.push(group);
    }
    for (const m of d.xml.matchAll(/<address uuid='([0-9a-f-]+)'\/>/g)) {
        if (!k.node(`/sys/bus/mdev/devices/${m[1]}`)) return err(`Failed to start domain '${name}'`, `device not found: mediated device '${m[1]}' not found`);
    }
    const paths = [...new Set(groups)].map((g) => `/dev/vfio/${g}`);
    const pid = k.hold(paths[0] ?? `/run/libvirt/qemu/${name}.pid`, "qemu-system-x86");
    for (const p of paths.slice(1)) (k.state.openers[p] ??= []).push(pid);
    d.pid = pid;
    d.state = "running";
    // libvirt's QEMU driver keeps the process's pidfile while it runs and deletes it once the process is gone.
    k.state.files[`/run/libvirt/qemu/${name}.pid`] = { data: `${pid}\n`, mode: 0o600 };
    return { code: 0, stdout: `Domain '${name}' started\n\n` };
}

function stopDomain(k: FakeKernel, v: FakeVirsh, name: string, d: FakeDomain) {
    if (d.pid !== undefined) k.release(d.pid);
    delete d.pid;
    delete k.state.files[`/run/libvirt/qemu/${name}.pid`];
    d.state = "shut off";
    if (!d.persistent) delete v.domains[name];
}

const virshSubsystem: FakeSubsystem = {
    resolve: () => undefined,
    exec(k, argv) {
        const v = virshState(k);
        if (!v || argv[0] !== "virsh") return undefined;
        if (argv[1] !== "-c" || argv[2] !== "qemu:///system") return err("failed to connect to the hypervisor", "fake virsh: only -c qemu:///system is modelled");
        const args = argv.slice(3);
        v.log.push(args);
        const [cmd, ...rest] = args;
        const flags = rest.filter((a) => a.startsWith("--"));
        const name = rest.filter((a) => !a.startsWith("--"))[0] ?? "";
        const d = v.domains[name];
        switch (cmd) {
            case "define": {
                const f = k.state.files[name];
                if (!f) return err(`Failed to open file '${name}': No such file or directory`);
                const m = /^<domain type='(kvm|qemu)'[^>]*>\n\s*<name>([^<]+)<\/name>/.exec(f.data);
                if (!m) return err("Failed to define domain from " + name, "XML error: missing domain name information");
                const existing = v.domains[m[2]];
                const id = Object.keys(v.domains).length + 1;
                const xml = normalized(f.data, id);
                // A definition without a <uuid> gets a new one; a domain keeps its UUID for life (libvirt 9.0).
                const uuidOf = (x: string) => /<uuid>([^<]+)<\/uuid>/.exec(x)?.[1];
                if (existing && uuidOf(existing.xml) !== uuidOf(xml)) return err(`Failed to define domain from ${name}`, `operation failed: domain '${m[2]}' already exists with uuid ${uuidOf(existing.xml)}`);
                if (existing) {
                    existing.xml = xml;
                    existing.persistent = true;
                } else v.domains[m[2]] = { xml, state: "shut off", persistent: true };
                return { code: 0, stdout: `Domain '${m[2]}' defined from ${name}\n\n` };
            }
            case "start":
                if (!d) return noDomain(name);
                if (d.state !== "shut off") return err(`Failed to start domain '${name}'`, "Requested operation is not valid: domain is already running");
                return startDomain(k, name, d);
            case "shutdown":
                if (!d) return noDomain(name);
                if (d.state === "shut off") return err(`Failed to shutdown domain '${name}'`, "Requested operation is not valid: domain is not running");
                return { code: 0, stdout: `Domain '${name}' is being shutdown\n\n` };
            case "destroy":
                if (!d) return noDomain(name);
                if (d.state === "shut off") return err(`Failed to destroy domain '${name}'`, "Requested operation is not valid: domain is not running");
                if (d.stuck) return err(`Failed to destroy domain '${name}'`, `Failed to terminate process ${d.pid} with SIGKILL: Device or resource busy`);
                stopDomain(k, v, name, d);
                return { code: 0, stdout: `Domain '${name}' destroyed\n\n` };
            case "undefine":
                if (!d || !d.persistent) return noDomain(name);
                delete k.state.files[`${AUTOSTART}/${name}.xml`];
                if (flags.includes("--nvram")) delete k.state.files[`/var/lib/libvirt/qemu/nvram/${name}_VARS.fd`];
                // A running domain lives on, transient, until it stops (virsh(1) undefine).
                if (d.state === "shut off") delete v.domains[name];
                else d.persistent = false;
                return { code: 0, stdout: `Domain '${name}' has been undefined\n\n` };
            case "domstate":
                if (!d) return noDomain(name);
                return { code: 0, stdout: `${d.state}\n\n` };
            case "dumpxml":
                if (!d) return noDomain(name);
                return { code: 0, stdout: d.xml };
            case "autostart":
                if (!d) return noDomain(name);
                if (flags.includes("--disable")) {
                    delete k.state.files[`${AUTOSTART}/${name}.xml`];
                    return { code: 0, stdout: `Domain '${name}' unmarked as autostarted\n\n` };
                }
                k.state.files[`${AUTOSTART}/${name}.xml`] = { data: d.xml, mode: 0o600 };
                return { code: 0, stdout: `Domain '${name}' marked as autostarted\n\n` };
            case "resume":
                if (!d) return noDomain(name);
                if (d.state !== "paused") return err(`Failed to resume domain '${name}'`, "Requested operation is not valid: domain is not paused");
                d.state = "running";
                return { code: 0, stdout: `Domain '${name}' resumed\n\n` };
            default:
                return err(`unknown command: '${cmd}'`);
        }
    },
};

/** virsh and libvirt's QEMU driver on the fake machine (no domain defined). */
export function installVirsh(k: FakeKernel): FakeKernel {
    k.state.ext.virsh = { domains: {}, log: [] } satisfies FakeVirsh;
    // libvirt's <emulator> (Debian's qemu-system-x86, which libvirt-daemon-driver-qemu recommends).
    k.state.files["/usr/bin/qemu-system-x86_64"] ??= { data: "#!/fake/qemu-system-x86_64\n", mode: 0o755 };
    if (!k.state.dirs.includes(AUTOSTART)) k.state.dirs.push("/etc/libvirt", "/etc/libvirt/qemu", AUTOSTART, "/run/libvirt", "/run/libvirt/qemu");
    return k.use(virshSubsystem, { first: true });
}

/** The domain as if edited by hand (virt-manager, `virsh edit`): its definition's text replaced by `edit`. */
export function editDomain(k: FakeKernel, name: string, edit: (xml: string) => string): void {
    const d = virshState(k).domains[name];
    d.xml = edit(d.xml);
}

/** The guest powered itself off (or QEMU died): the domain is shut off and its groups are free again. */
export function powerOff(k: FakeKernel, name: string): void {
    const v = virshState(k);
    stopDomain(k, v, name, v.domains[name]);
}
