/**
 * The QEMU command line of a passthrough VM, as a pure function of the VM's normalized inputs, so `pulumi preview`
 * shows the exact argv that will run and unit tests compare it with the lines the Looking Glass docs and the
 * ArchWiki ("PCI passthrough via OVMF") document:
 *
 *   -device vfio-pci,host=0000:01:00.0,multifunction=on[,x-vga=on][,romfile=...]
 *   -device vfio-pci,sysfsdev=/sys/bus/mdev/devices/<uuid>[,display=off]
 *   -object memory-backend-file,id=looking-glass,mem-path=/dev/kvmfr0,size=64M,share=yes
 *   -device ivshmem-plain,id=shmem0,memdev=looking-glass
 *   -drive if=pflash,format=raw,readonly=on,file=OVMF_CODE.fd   (+ a per-VM copy of the VARS file)
 *   -cpu host,kvm=off,hv-vendor-id=<12 chars>,hv-...              (NVIDIA "Error 43"; q35: kernel_irqchip=on)
 *   -daemonize -pidfile <file> -qmp unix:<sock>,server=on,wait=off -name <name>
 *
 * Each passed-through physical slot (the functions of one device in one IOMMU group) goes behind its own
 * pcie-root-port, function 0 with multifunction=on, as libvirt places host devices on q35: guest drivers (NVIDIA's
 * in particular) expect a GPU on a PCIe port, and the GPU's audio function must stay in the same slot.
 *
 * Every device on pcie.0 (root ports included) gets a fixed `addr=` from {@link GUEST_PCI_LAYOUT}, so what the guest
 * sees at an address never depends on what else is on the command line.
 */
import { createHash } from "crypto";

export const QEMU_BINARY = "qemu-system-x86_64";
/** Where per-VM runtime files live (pidfile, QMP socket, serial log); tmpfs, mode 0700 per VM. */
export const VM_RUN_ROOT = "/run/pulumi-vfio/vm";
/** Where per-VM persistent files live (the copy of the OVMF VARS file); mode 0700 per VM. */
export const VM_STATE_ROOT = "/var/lib/pulumi-vfio/vm";
export const UNIT_DIR = "/etc/systemd/system";

/** A VM name becomes a directory and a systemd unit name: letters, digits, `_`, `.`, `-`, at most 64. */
export const VM_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$/;

export interface HostDevice {
    /** `DDDD:BB:DD.F`. */
    address: string;
    /** IOMMU group; functions of one slot in one group share a guest slot. */
    group: number | null;
    /** `x-vga=on`: legacy VGA ranges go to this device (a GPU used as the guest's primary display with SeaBIOS). */
    xVga?: boolean;
    /** A ROM file for this function (`romfile=`), e.g. a patched vBIOS. */
    romfile?: string;
}

export interface MdevDevice {
    uuid: string;
    /** The mdev type id (`nvidia-63`, `i915-GVTg_V5_4`, `mtty-2`); an `nvidia-*` type sets QEMU's -uuid. */
    type?: string;
    /** `display=on|off` of a display-capable mdev; absent leaves QEMU's default. */
    display?: boolean;
    /** NVIDIA vGPU 17+ has no mdev bus: the vGPU is a VF with a vGPU type, passed by address (`host=`). */
    address?: string;
}

export interface DiskSpec {
    path: string;
    format: "raw" | "qcow2";
    bus: "virtio" | "sata" | "nvme";
    readOnly: boolean;
}

export interface NetworkSpec {
    mode: "user" | "bridge" | "none";
    bridge?: string;
    model: string;
    mac?: string;
}

/** Everything the command line depends on: the normalized inputs plus the per-VM paths. */
export interface VmSpec {
    name: string;
    machine: string;
    accel: "kvm" | "tcg";
    cpu: { model: string; sockets: number; cores: number; threads: number };
    memoryMb: number;
    hugepages: boolean;
    /** OVMF code (read-only) and the per-VM copy of the VARS file; absent = SeaBIOS. */
    firmware?: { code: string; vars: string };
    disks: DiskSpec[];
    cdrom?: string;
    network: NetworkSpec;
    hostDevices: HostDevice[];
    mdevs: MdevDevice[];
    sharedMemory?: { path: string; sizeMb: number };
    hideHypervisor: boolean;
    hvVendorId: string;
    /** SMBIOS UUID (`-uuid`): given, or the first NVIDIA mdev's (NVIDIA vGPU guests need it), else none. */
    uuid?: string;
    extraArgs: string[];
    paths: VmPaths;
}

export interface VmPaths {
    runDir: string;
    stateDir: string;
    pidFile: string;
    qmpSocket: string;
    serialLog: string;
    /** The per-VM copy of the OVMF VARS file (in stateDir). */
    varsFile: string;
    /** The systemd unit file written when autostart is on. */
    unitFile: string;
    unitName: string;
}

export function vmPaths(name: string): VmPaths {
    if (!VM_NAME.test(name)) throw new Error(`${JSON.stringify(name)} is not a VM name: use letters, digits, '_', '.', '-' (at most 64, not starting with '.', '_' or '-')`);
    const runDir = `${VM_RUN_ROOT}/${name}`;
    const stateDir = `${VM_STATE_ROOT}/${name}`;
    const unitName = `pulumi-vfio-vm-${name}.service`;
    return {
        runDir,
        stateDir,
        pidFile: `${runDir}/qemu.pid`,
        qmpSocket: `${runDir}/qmp.sock`,
        serialLog: `${runDir}/serial.log`,
        varsFile: `${stateDir}/OVMF_VARS.fd`,
        unitFile: `${UNIT_DIR}/${unitName}`,
        unitName,
    };
}

/** QEMU's option syntax: a `,` inside a value is written `,,`. */
export function optValue(v: string): string {
    return v.replace(/,/g, ",,");
}

/** A stable locally administered MAC (QEMU's 52:54:00 prefix) per VM name, so the guest keeps its NIC identity. */
export function deterministicMac(name: string): string {
    const h = createHash("sha256").update(`pulumi-vfio:${name}`).digest();
    return `52:54:00:${[h[0], h[1], h[2]].map((b) => b.toString(16).padStart(2, "0")).join(":")}`;
}

/**
 * Looking Glass's IVSHMEM arguments (ivshmem_kvmfr.rst): `size` must equal the kvmfr device's or file's size.
 * `placement` (`bus=pcie.0,addr=...`) is appended to the device when given (PassthroughVm pins its address).
 */
export function ivshmemArgs(path: string, sizeMb: number, index = 0, placement?: string): string[] {
    const backend = index === 0 ? "looking-glass" : `looking-glass${index}`;
    return ["-object", `memory-backend-file,id=${backend},mem-path=${optValue(path)},size=${sizeMb}M,share=yes`, "-device", `ivshmem-plain,id=shmem${index},memdev=${backend}${placement ? `,${placement}` : ""}`];
}

/**
 * Hyper-V enlightenments given to a KVM guest with `hideHypervisor`, in the order Proxmox VE emits them for a VM
 * with an `x-vga` GPU (qemu-server, PVE/QemuServer/CPUConfig.pm `add_hyperv_enlightenments`: hv_vendor_id then
 * spinlocks=0x1fff, vapic, time, reset, vpindex, runtime, relaxed, synic, stimer, ipi), plus hv-frequencies, which
 * QEMU's docs recommend with the rest. They are what makes `hv-vendor-id` do anything: QEMU's
 * docs/system/i386/hyperv.rst says "hv-vendor-id is not an enlightenment and thus doesn't enable Hyper-V
 * identification when specified without some other enlightenment", so `kvm=off,hv_vendor_id=...` alone leaves the
 * guest seeing KVM's CPUID leaves, not a Hyper-V vendor. Dependencies (hyperv.rst "Requires"): synic needs vpindex;
 * stimer needs vpindex, synic and time; ipi needs vpindex; all are here. Left out as that page advises: the
 * nested-only, debugging and hardware-specific ones (evmcs, syndbg, passthrough, avic, crash, reenlightenment,
 * no-nonarch-coresharing). Spelled with dashes, QEMU's property names (`hv_x` is the same property, QEMU maps `_`).
 */
export const HYPERV_ENLIGHTENMENTS = ["hv-spinlocks=0x1fff", "hv-vapic", "hv-time", "hv-reset", "hv-vpindex", "hv-runtime", "hv-relaxed", "hv-synic", "hv-stimer", "hv-ipi", "hv-frequencies"] as const;

/** The `-cpu` value: the model, then (hideHypervisor) `kvm=off` and, on KVM, the Hyper-V identity and enlightenments. */
export function cpuOption(spec: Pick<VmSpec, "cpu" | "accel" | "hideHypervisor" | "hvVendorId">): string {
    const cpu = [spec.cpu.model];
    if (spec.hideHypervisor) {
        // kvm=off hides KVM's own signature (CPUID 0x40000000 "KVMKVMKVM"), which NVIDIA's pre-465 drivers refused.
        cpu.push("kvm=off");
        // Hyper-V emulation is KVM's (hyperv.rst: "KVM on x86 implements Hyper-V Enlightenments"): TCG has none,
        // and a vendor id without them has no effect, so with TCG neither is emitted (as Proxmox: only `if $kvm`).
        if (spec.accel === "kvm") cpu.push(`hv-vendor-id=${spec.hvVendorId}`, ...HYPERV_ENLIGHTENMENTS);
    }
    return cpu.join(",");
}

/**
 * Where each kind of device sits on q35's root bus (pcie.0), as slot ranges; `n` devices of a kind fill a range
 * function by function (8 per slot, function 0 `multifunction=on` when its slot has more), in declared order.
 * Fixed ranges rather than "the next free slot" (QEMU's default) so adding a disk, an mdev or a NIC never moves the
 * GPU: Windows keys a PCI device's instance to its parent port's location, and a GPU at a new address is a new
 * device to it (driver reinstalled, display settings lost). As libvirt and Proxmox do (Proxmox's fixed
 * `hostpciN` → root port table, `get_pcie_addr_map` in PVE/QemuServer/PCI.pm), the position comes from the device's class and declared
 * index, not from a hash. Slot 0x00 is q35's host bridge and 0x1f its ICH9 functions; 0x01, 0x08-0x0f and
 * 0x1c-0x1e are left for `extraArgs` devices without an `addr=` (QEMU gives them the lowest free slot).
 */
export const GUEST_PCI_LAYOUT = {
    nic: { first: 0x02, slots: 1 },
    sharedMemory: { first: 0x03, slots: 1 },
    /** virtio-blk and NVMe disks (SATA disks and the cdrom are on the built-in AHCI at 0x1f.2). */
    disks: { first: 0x04, slots: 4 },
    /** One pcie-root-port per guest slot of passed-through host functions ({@link guestSlots}), in declared order. */
    hostPorts: { first: 0x10, slots: 8 },
    /** One pcie-root-port per mdev, in declared order. */
    mdevPorts: { first: 0x18, slots: 4 },
} as const;

export type PciClass = keyof typeof GUEST_PCI_LAYOUT;

/** How many devices of a kind fit in its range. */
export const capacity = (cls: PciClass) => GUEST_PCI_LAYOUT[cls].slots * 8;

/**
 * The pcie.0 address of device `i` of `count` of a kind: `addr=0xSS.F`, with `multifunction=on` on function 0 when
 * its slot holds more than one. Throws past the kind's capacity ({@link layoutProblems} says so at check).
 */
export function pcieAddress(cls: PciClass, i: number, count: number): { slot: number; fn: number; opts: string } {
    const r = GUEST_PCI_LAYOUT[cls];
    if (i >= capacity(cls)) throw new Error(`more than ${capacity(cls)} ${cls} devices do not fit in slots 0x${r.first.toString(16)}-0x${(r.first + r.slots - 1).toString(16)}`);
    const slot = r.first + Math.floor(i / 8);
    const fn = i % 8;
    const inSlot = Math.min(8, count - (slot - r.first) * 8);
    return { slot, fn, opts: `bus=pcie.0,addr=0x${slot.toString(16)}.${fn}${fn === 0 && inSlot > 1 ? ",multifunction=on" : ""}` };
}

/** A root port at its fixed address; its chassis number is its devfn (slot × 8 + function), unique on pcie.0. */
function rootPort(id: string, cls: "hostPorts" | "mdevPorts", i: number, count: number): string {
    const at = pcieAddress(cls, i, count);
    return `pcie-root-port,id=${id},chassis=${at.slot * 8 + at.fn},${at.opts}`;
}

/** Devices beyond what the fixed layout holds, each naming the field. Pure. */
export function layoutProblems(spec: Pick<VmSpec, "disks" | "mdevs" | "hostDevices">): { property: string; reason: string }[] {
    const out: { property: string; reason: string }[] = [];
    const pciDisks = spec.disks.filter((d) => d.bus !== "sata").length;
    if (pciDisks > capacity("disks")) out.push({ property: "disks", reason: `${pciDisks} virtio/NVMe disks: at most ${capacity("disks")} fit; put the others on bus "sata"` });
    if (spec.mdevs.length > capacity("mdevPorts")) out.push({ property: "mdevs", reason: `${spec.mdevs.length} mdevs: at most ${capacity("mdevPorts")} fit` });
    const slots = guestSlots(spec.hostDevices).length;
    if (slots > capacity("hostPorts")) out.push({ property: "devices", reason: `the devices need ${slots} guest slots: at most ${capacity("hostPorts")} fit` });
    return out;
}

export interface GuestSlot {
    /** Root port id (`rp0`...). */
    port: string;
    functions: { device: HostDevice; guestFunction: number; id: string }[];
}

/**
 * Group host functions into guest slots: functions of the same physical slot (domain:bus:device) in the same IOMMU
 * group share one (a GPU and its HDMI audio); anything else, such as SR-IOV VFs of one PF, gets its own slot. A
 * slot keeps the host's function numbers when it has function 0; otherwise its functions are numbered from 0, since
 * a guest does not look past an empty function 0.
 */
export function guestSlots(devices: HostDevice[]): GuestSlot[] {
    const bySlot = new Map<string, HostDevice[]>();
    for (const d of devices) {
        const key = d.address.slice(0, d.address.lastIndexOf(".")) + "|" + (d.group ?? `alone:${d.address}`);
        if (!bySlot.has(key)) bySlot.set(key, []);
        if (!bySlot.get(key)!.some((x) => x.address === d.address)) bySlot.get(key)!.push(d);
    }
    let n = 0;
    let port = 0;
    return [...bySlot.values()].map((fs) => {
        const sorted = [...fs].sort((a, b) => fn(a.address) - fn(b.address));
        const keepNumbers = sorted.some((d) => fn(d.address) === 0);
        return {
            port: `rp${port++}`,
            functions: sorted.map((device, i) => ({ device, guestFunction: keepNumbers ? fn(device.address) : i, id: `hostdev${n++}` })),
        };
    });
}

const fn = (address: string) => Number(address.slice(address.lastIndexOf(".") + 1));

/** The qdev ids `query-pci` must list once the VM runs: every passed-through function, mdev and the IVSHMEM device. */
export function expectedDevices(spec: VmSpec): { id: string; what: string }[] {
    const out: { id: string; what: string }[] = [];
    for (const s of guestSlots(spec.hostDevices)) for (const f of s.functions) out.push({ id: f.id, what: `PCI device ${f.device.address}` });
    spec.mdevs.forEach((m, i) => out.push({ id: `mdev${i}`, what: `mdev ${m.uuid}` }));
    if (spec.sharedMemory) out.push({ id: "shmem0", what: `IVSHMEM ${spec.sharedMemory.path}` });
    return out;
}

/** The SMBIOS UUID the VM gets: the given one, else the first NVIDIA mdev's (NVIDIA vGPU guests need `-uuid`). */
export function smbiosUuid(uuid: string | undefined, mdevs: MdevDevice[]): string | undefined {
    return uuid ?? mdevs.find((m) => (m.type ?? "").startsWith("nvidia-"))?.uuid;
}

/** The whole argv, program first. Deterministic: the same spec gives the same argv, byte for byte. */
export function buildCommandLine(spec: VmSpec): string[] {
    const a: string[] = [QEMU_BINARY, "-name", spec.name];
    const uuid = smbiosUuid(spec.uuid, spec.mdevs);
    if (uuid) a.push("-uuid", uuid);

    const machine = [spec.machine, `accel=${spec.accel}`];
    // NVIDIA's driver checks for a hypervisor; on q35 with KVM the in-kernel irqchip is part of the workaround.
    if (spec.hideHypervisor && spec.accel === "kvm") machine.push("kernel_irqchip=on");
    if (spec.hugepages) machine.push("memory-backend=mem0");
    a.push("-machine", machine.join(","));

    a.push("-cpu", cpuOption(spec));
    const { sockets, cores, threads } = spec.cpu;
    a.push("-smp", `${sockets * cores * threads},sockets=${sockets},cores=${cores},threads=${threads}`);
    a.push("-m", `${spec.memoryMb}M`);
    if (spec.hugepages) a.push("-object", `memory-backend-file,id=mem0,size=${spec.memoryMb}M,mem-path=/dev/hugepages,share=on,prealloc=on`);

    // Only what is listed below: no default NIC, VGA, floppy or serial, so query-pci is ours to predict.
    a.push("-nodefaults", "-display", "none");

    if (spec.firmware) {
        a.push("-drive", `if=pflash,format=raw,readonly=on,file=${optValue(spec.firmware.code)}`);
        a.push("-drive", `if=pflash,format=raw,file=${optValue(spec.firmware.vars)}`);
    }

    // q35's built-in AHCI has ports ide.0..ide.5: the cdrom takes ide.0, SATA disks the next ones.
    let ahci = spec.cdrom ? 1 : 0;
    const pciDisks = spec.disks.filter((d) => d.bus !== "sata").length;
    let pciDisk = 0;
    spec.disks.forEach((d, i) => {
        const id = `disk${i}`;
        a.push("-drive", `file=${optValue(d.path)},if=none,id=${id},format=${d.format}${d.readOnly ? ",readonly=on" : ""}`);
        const at = () => pcieAddress("disks", pciDisk++, pciDisks).opts;
        if (d.bus === "virtio") a.push("-device", `virtio-blk-pci,drive=${id},id=${id}-dev,${at()}`);
        else if (d.bus === "nvme") a.push("-device", `nvme,drive=${id},serial=${spec.name.slice(0, 12)}-${i},id=${id}-dev,${at()}`);
        else a.push("-device", `ide-hd,drive=${id},bus=ide.${ahci++},id=${id}-dev`);
    });
    if (spec.cdrom) {
        a.push("-drive", `file=${optValue(spec.cdrom)},if=none,id=cdrom0,media=cdrom,readonly=on`);
        a.push("-device", "ide-cd,drive=cdrom0,bus=ide.0,id=cdrom0-dev");
    }

    if (spec.network.mode !== "none") {
        a.push("-netdev", spec.network.mode === "bridge" ? `bridge,id=net0,br=${spec.network.bridge}` : "user,id=net0");
        a.push("-device", `${spec.network.model},netdev=net0,mac=${spec.network.mac ?? deterministicMac(spec.name)},id=nic0,${pcieAddress("nic", 0, 1).opts}`);
    }

    const slots = guestSlots(spec.hostDevices);
    slots.forEach((slot, i) => {
        a.push("-device", rootPort(slot.port, "hostPorts", i, slots.length));
        for (const f of slot.functions) {
            const o = [`vfio-pci,host=${f.device.address}`];
            if (f.guestFunction === 0 && slot.functions.length > 1) o.push("multifunction=on");
            if (f.device.xVga) o.push("x-vga=on");
            if (f.device.romfile) o.push(`romfile=${optValue(f.device.romfile)}`);
            o.push(`id=${f.id}`, `bus=${slot.port}`, `addr=00.${f.guestFunction}`);
            a.push("-device", o.join(","));
        }
    });
    spec.mdevs.forEach((m, i) => {
        const rp = `rp-mdev${i}`;
        a.push("-device", rootPort(rp, "mdevPorts", i, spec.mdevs.length));
        const o = [m.address ? `vfio-pci,host=${m.address}` : `vfio-pci,sysfsdev=/sys/bus/mdev/devices/${m.uuid}`];
        if (m.display !== undefined) o.push(`display=${m.display ? "on" : "off"}`);
        o.push(`id=mdev${i}`, `bus=${rp}`, "addr=00.0");
        a.push("-device", o.join(","));
    });

    if (spec.sharedMemory) a.push(...ivshmemArgs(spec.sharedMemory.path, spec.sharedMemory.sizeMb, 0, pcieAddress("sharedMemory", 0, 1).opts));

    const p = spec.paths;
    a.push("-serial", `file:${p.serialLog}`);
    a.push("-pidfile", p.pidFile, "-qmp", `unix:${p.qmpSocket},server=on,wait=off`, "-daemonize");
    a.push(...spec.extraArgs);
    return a;
}

/** One argv word quoted for a systemd unit's Exec line (systemd.service(5) "Command lines"). */
export function systemdQuote(arg: string): string {
    const escaped = arg.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\$/g, "$$$$").replace(/%/g, "%%");
    return /^[A-Za-z0-9_@+,:=./-]+$/.test(arg) ? escaped : `"${escaped}"`;
}

/**
 * The unit that starts the VM at boot (autostart). QEMU daemonizes and writes the pidfile, so Type=forking with
 * PIDFile=. The modules and driver bindings must be in place first: systemd-modules-load (kvmfr) and udev settle,
 * and driverctl's units when IommuBinding is persistent. /run is empty after a reboot, so the run dir is made here.
 */
export function systemdUnit(spec: VmSpec, argv: string[], shutdownTimeoutSeconds: number): string {
    const p = spec.paths;
    return [
        "# Written by pulumi-vfio (PassthroughVm). Changes are overwritten by the next `pulumi up`.",
        "[Unit]",
        `Description=pulumi-vfio VM ${spec.name}`,
        "Wants=network-online.target",
        "After=network-online.target systemd-modules-load.service systemd-udev-settle.service driverctl.service",
        "",
        "[Service]",
        "Type=forking",
        `PIDFile=${p.pidFile}`,
        `ExecStartPre=/bin/mkdir -p -m 0700 ${p.runDir}`,
        `ExecStart=${argv.map(systemdQuote).join(" ")}`,
        `TimeoutStopSec=${shutdownTimeoutSeconds}`,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ].join("\n");
}
