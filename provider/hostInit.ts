/**
 * `pulumi-vfio init`: a first host.yaml written from what a host has (its GPUs with their IOMMU groups, SR-IOV
 * devices, mdev parents and types, kvmfr), as commented suggestions under each section. Nothing is active: the
 * file converges nothing until the user uncomments what they mean, so a `pulumi up` right after `init` cannot take
 * a GPU away from a running desktop. Every suggestion is valid as written (tests uncomment all of them and check
 * the result against the schema and the reference rules).
 */
import { HostInventory, InventoryDevice, MdevParent } from "./inventory";

export interface InitOptions {
    /** The connection to write (from `--ssh`), without secrets. */
    connection?: { host: string; user?: string; port?: number; hostKey?: string; privateKeyFile?: string };
    /** The `$schema` path for editors. Default: where npm installs this package in a project. */
    schemaPath?: string;
    /** Write the suggestions uncommented (for tests: the result must be a valid definition). */
    uncommented?: boolean;
}

export const DEFAULT_SCHEMA_PATH = "./node_modules/pulumi-vfio/schema/host.schema.json";

const isGpu = (d: InventoryDevice) => d.class.startsWith("03");
/** `0000:01:00.0` → `01-00-0` (a name the schema accepts). */
const short = (address: string) => address.replace(/^0000:/, "").replace(/[:.]/g, "-");
const safeName = (s: string) => s.replace(/[^A-Za-z0-9_-]/g, "-").replace(/^[-_]+/, "") || "x";
const q = (s: string) => JSON.stringify(s);

function describeDevice(d: InventoryDevice | undefined, address: string): string {
    if (!d) return address;
    const name = [d.vendorName, d.deviceName].filter(Boolean).join(" ");
    return `${address} ${d.className} [${d.vendor}:${d.device}]${name ? ` ${name}` : ""}, ${d.driver ?? "no driver"}`;
}

/** The text of a starting host.yaml for `inv`. */
export function renderHostYaml(inv: HostInventory, opts: InitOptions = {}): string {
    const out: string[] = [];
    const info = (indent: number, text: string) => out.push(`${" ".repeat(indent)}# ${text}`);
    const snippet = (indent: number, lines: string[]) => {
        for (const l of lines) out.push(opts.uncommented ? `${" ".repeat(indent)}${l}` : `${" ".repeat(indent)}# ${l}`);
    };
    const byAddress = new Map(inv.devices.map((d) => [d.address, d]));

    out.push(`# yaml-language-server: $schema=${opts.schemaPath ?? DEFAULT_SCHEMA_PATH}`);
    out.push(`# Written by \`pulumi-vfio init\` from ${inv.host} (kernel ${inv.kernelRelease ?? "unknown"}).`);
    out.push("# Nothing below is active yet: uncomment what this host should have, then `pulumi preview` shows every change.");
    if (!inv.iommu.enabled) {
        out.push("#");
        out.push(`# WARNING: ${inv.iommu.fix ?? "the IOMMU is off"}. Without it no device can be passed through.`);
    } else {
        out.push(`# IOMMU on, ${inv.groups.length} groups.`);
    }
    out.push("");
    if (opts.connection) {
        const c = opts.connection;
        out.push("connection:");
        out.push(`  host: ${q(c.host)}`);
        if (c.user) out.push(`  user: ${q(c.user)}`);
        if (c.port) out.push(`  port: ${c.port}`);
        if (c.hostKey) out.push(`  hostKey: ${q(c.hostKey)}`);
        else info(2, "hostKey: \"ssh-ed25519 AAAA...\"   # pin the host key (ssh-keyscan -t ed25519 <host>)");
        if (c.privateKeyFile) out.push(`  privateKeyFile: ${q(c.privateKeyFile)}`);
        else info(2, "credentials: an ssh-agent (SSH_AUTH_SOCK), or privateKeyFile: ~/.ssh/id_ed25519 — never a key or password here");
        out.push("");
    } else {
        out.push("# No connection: the machine running `pulumi`. To converge it over SSH instead:");
        out.push("# connection:");
        out.push("#   host: gpu-box.lan");
        out.push("#   user: root");
        out.push("");
    }

    const gpus = inv.devices.filter((d) => isGpu(d) && !d.physfn);

    // ---- bootConfig: with the IOMMU off, nothing else can work; propose turning it on at the next boot
    if (!inv.iommu.enabled) {
        const slot = (a: string) => a.slice(0, a.lastIndexOf("."));
        const guest = gpus.find((g) => !g.bootVga);
        const claim = guest ? inv.devices.filter((d) => slot(d.address) === slot(guest.address)).map((d) => d.address) : [];
        info(0, "The IOMMU is off: a BootConfig turns it on from the next boot (AMD CPUs: amd_iommu=on instead), and can");
        info(0, "claim the passthrough GPU's functions for vfio-pci before their host drivers load. `pulumi up` then reboots");
        info(0, "with `reboot: ifNeeded` (over SSH), or tells you `pendingReboot`.");
        snippet(0, ["bootConfig:", "  kernelParameters: [intel_iommu=on, iommu=pt]"]);
        if (claim.length) snippet(0, [`  earlyBinding: [${claim.map(q).join(", ")}]`]);
        out.push("");
    }

    // ---- bindings: every GPU, with what shares its IOMMU group
    const bindingNames: string[] = [];
    out.push("bindings:");
    if (!gpus.length) info(2, "No GPU (PCI class 03xx) found on this host.");
    let n = 0;
    for (const g of gpus) {
        const group = inv.groups.find((x) => x.number === g.group);
        info(2, `${describeDevice(g, g.address)}`);
        if (group) {
            const others = group.members.filter((m) => m !== g.address);
            info(2, `  IOMMU group ${group.number}${others.length ? ` with ${others.map((m) => describeDevice(byAddress.get(m), m)).join("; ")}` : " (alone)"}`);
        }
        if (g.bootVga) {
            info(2, "  boot_vga=1: the host's console. Passing it through needs `allowBootVga: true` and another way into the host.");
            out.push("");
            continue;
        }
        if (g.sriov || g.physfn) {
            // A PF bound to vfio-pci can no longer create VFs: such a GPU is shared through its VFs or vGPUs.
            info(2, g.sriov ? "  SR-IOV GPU: share it through its VFs (virtualFunctions) or vGPUs (mdevs), not by binding the PF" : `  a VF of ${g.physfn}: see virtualFunctions`);
            out.push("");
            continue;
        }
        const name = `gpu${++n === 1 ? "" : n}`;
        bindingNames.push(name);
        snippet(2, [`${name}:`, `  device: ${q(g.address)}   # the whole group goes to vfio-pci (wholeGroup: true)`, "  persistent: true           # bound again at boot (driverctl)"]);
        out.push("");
    }
    if (!out[out.length - 1]) out.pop();
    out.push("");

    // ---- SR-IOV physical functions
    const pfs = inv.devices.filter((d) => d.sriov && !d.physfn);
    const vfNames: string[] = [];
    out.push("virtualFunctions:");
    if (!pfs.length) info(2, "No SR-IOV device (sriov_totalvfs) found.");
    for (const pf of pfs) {
        const name = `vfs-${short(pf.address)}`;
        vfNames.push(name);
        info(2, `${describeDevice(pf, pf.address)}: ${pf.sriov!.numVfs} of ${pf.sriov!.totalVfs} VFs enabled`);
        snippet(2, [`${name}:`, `  physicalFunction: ${q(pf.address)}`, `  count: ${Math.min(2, pf.sriov!.totalVfs)}   # at most ${pf.sriov!.totalVfs}`]);
        out.push("");
    }
    if (!out[out.length - 1]) out.pop();
    out.push("");

    // ---- mdev parents and their types
    const mdevNames: string[] = [];
    out.push("mdevs:");
    if (!inv.mdev.length) info(2, "No mdev parent under /sys/class/mdev_bus (NVIDIA vGPU needs NVIDIA's host driver; Intel GVT-g i915.enable_gvt=1).");
    for (const p of inv.mdev) mdevSuggestion(p, mdevNames, info, snippet, out);
    if (!out[out.length - 1]) out.pop();
    out.push("");

    // ---- kvmfr
    out.push("kvmfr:");
    const hasKvmfr = inv.modules.includes("kvmfr") || inv.kvmfr.length > 0;
    info(2, hasKvmfr ? `Looking Glass kvmfr: ${inv.kvmfr.map((k) => k.path).join(", ") || "module present, no device yet"}` : "Looking Glass: the kvmfr module is not loaded here (it comes with Looking Glass's DKMS package).");
    snippet(2, ["looking-glass:", "  index: 0        # /dev/kvmfr0", "  width: 1920     # the largest guest resolution", "  height: 1080", "  owner: root     # the user running looking-glass-client"]);
    out.push("");

    // ---- one VM using one of each
    out.push("vms:");
    info(2, "A VM names what it uses; each device goes to one VM. VMs start after their devices and stop before them.");
    const vm = ["vm1:", "  memoryMb: 8192", "  cpu: { cores: 4 }", "  firmware: { code: /usr/share/OVMF/OVMF_CODE_4M.fd, vars: /usr/share/OVMF/OVMF_VARS_4M.fd }", "  disks: [/var/lib/vms/vm1.qcow2]"];
    if (bindingNames.length) vm.push(`  devices: [${bindingNames[0]}]`);
    if (vfNames.length) vm.push(`  virtualFunctions: [{ from: ${vfNames[0]}, index: 0 }]`);
    if (mdevNames.length) vm.push(`  mdevs: [${mdevNames[0]}]`);
    vm.push("  sharedMemory: looking-glass");
    snippet(2, vm);
    return out.join("\n") + "\n";
}

function mdevSuggestion(
    p: MdevParent,
    names: string[],
    info: (indent: number, text: string) => void,
    snippet: (indent: number, lines: string[]) => void,
    out: string[],
): void {
    info(2, `parent ${p.parent}: ${p.types.map((t) => `${t.id}${t.name && t.name !== t.id ? ` "${t.name}"` : ""} (${t.availableInstances ?? "?"} left)`).join(", ") || "no types"}`);
    const pick = p.types.find((t) => (t.availableInstances ?? 0) > 0) ?? p.types[0];
    if (!pick) {
        out.push("");
        return;
    }
    const name = `vgpu-${safeName(p.pci ? short(p.parent) : p.parent)}`;
    names.push(name);
    snippet(2, [`${name}:`, `  parent: ${q(p.parent)}`, `  type: ${q(pick.id)}   # or vram: { min: 2048 } to choose by video memory`]);
    out.push("");
}
