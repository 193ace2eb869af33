/**
 * The libvirt domain of a PassthroughVm, built from the one VM spec by a pure function ({@link buildDomainXml}),
 * and the drift between it and a domain as libvirt shows it ({@link domainDrift}, parsed with fast-xml-parser).
 *
 * The forms are libvirt's documented ones (https://libvirt.org/formatdomain.html):
 * - `<domain type='kvm'|'qemu'>`: `qemu` is TCG (accel tcg, e.g. where /dev/kvm is not usable).
 * - Host PCI functions: `<hostdev mode='subsystem' type='pci' managed='no'>` with the `<source><address>`, one per
 *   function of each group; `managed='no'` because the IommuBinding binds them: libvirt must not detach them from
 *   their host driver at start nor reattach them at stop ("Host device assignment", managed attribute). A ROM file
 *   is `<rom file=…/>`.
 * - Mediated devices: `<hostdev mode='subsystem' type='mdev' model='vfio-pci'>` with `<source><address uuid=…/>`.
 * - Looking Glass on a /dev/shm file: `<shmem name=…><model type='ivshmem-plain'/><size unit='M'>…</size></shmem>`
 *   ("Shared memory device": libvirt backs it with /dev/shm/<name>). On kvmfr, the form Looking Glass documents
 *   for libvirt (looking-glass.io, "kvmfr" module, libvirt section): `qemu:commandline` args in the qemu namespace,
 *   `-device ivshmem-plain` and `-object memory-backend-file` on /dev/kvmfrN, as JSON.
 * - `<memoryBacking><hugepages/>`, `<vcpu>` + `<cputune><vcpupin vcpu=… cpuset=…/>` (CPU tuning),
 *   `<features><kvm><hidden state='on'/></kvm><hyperv mode='custom'><vendor_id state='on' value=…/></hyperv>`
 *   (Hypervisor features; the Hyper-V part only with KVM, as on our QEMU command line), OVMF as
 *   `<loader readonly='yes' type='pflash'>` and `<nvram template=…>` (BIOS bootloader).
 * - No `<interface>` for network mode `none`; `type='user'` (user-mode SLIRP) or `type='bridge'` otherwise.
 */
import { XMLParser } from "fast-xml-parser";
import type { VmSpec } from "../qemu/cmdline";
import { QEMU_BINARY, deterministicMac, smbiosUuid } from "../qemu/cmdline";
import { LIBVIRT_NVRAM_DIR } from "../vm/spec";

/** The qemu namespace of `<qemu:commandline>` (formatdomain, "QEMU command-line passthrough"). */
export const QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0";
/** Where a Debian/Ubuntu libvirt finds QEMU (libvirt's `<emulator>`). */
export const EMULATOR = `/usr/bin/${QEMU_BINARY}`;

/** An XML element: its tag, attributes, text and children, in document order. */
export interface XmlNode {
    tag: string;
    attrs: Record<string, string>;
    text?: string;
    children: XmlNode[];
}

const el = (tag: string, attrs: Record<string, string | number | undefined> = {}, children: (XmlNode | undefined | false | "" | 0)[] = [], text?: string | number): XmlNode => ({
    tag,
    attrs: Object.fromEntries(Object.entries(attrs).filter(([, v]) => v !== undefined).map(([k, v]) => [k, String(v)])),
    children: children.filter((c): c is XmlNode => !!c),
    ...(text !== undefined ? { text: String(text) } : {}),
});

const hex = (n: number, width: number) => `0x${n.toString(16).padStart(width, "0")}`;

/** `0000:03:00.1` → libvirt's `<address domain='0x0000' bus='0x03' slot='0x00' function='0x1'/>`. */
export function pciSourceAddress(bdf: string): XmlNode {
    const m = /^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/.exec(bdf);
    if (!m) throw new Error(`${JSON.stringify(bdf)} is not a full PCI address (DDDD:BB:DD.F)`);
    return el("address", { domain: hex(parseInt(m[1], 16), 4), bus: hex(parseInt(m[2], 16), 2), slot: hex(parseInt(m[3], 16), 2), function: hex(parseInt(m[4], 16), 1) });
}

/** What the domain needs beyond the spec: vCPU pinning, and the OVMF VARS template libvirt copies to its NVRAM. */
export interface DomainExtras {
    pinning?: number[];
    /** The VARS template (the spec's `firmware.vars` is the QEMU backend's per-VM copy). */
    varsTemplate?: string;
    /**
     * The `<uuid>` to write when the spec has none: the one libvirt gave the defined domain. libvirt generates a
     * random UUID for a definition without one, and refuses to redefine a domain under another UUID ("operation
     * failed: domain 'x' already exists with uuid ...", seen on the lab's libvirt 9.0), so a redefinition keeps it.
     */
    uuid?: string;
}

/** The libvirt `<shmem>` name of a /dev/shm file (libvirt creates /dev/shm/<name>), or undefined for kvmfr. */
export function shmemName(path: string): string | undefined {
    const m = /^\/dev\/shm\/([A-Za-z0-9_.-]+)$/.exec(path);
    return m ? m[1] : undefined;
}

/** The NVRAM file libvirt keeps for the domain (its default place and name, `<name>_VARS.fd`). */
export const nvramPath = (name: string) => `${LIBVIRT_NVRAM_DIR}/${name}_VARS.fd`;

/** The domain as a tree (see the file's comment for each form's source). Pure and deterministic. */
export function buildDomain(spec: VmSpec, extras: DomainExtras = {}): XmlNode {
    const { sockets, cores, threads } = spec.cpu;
    const vcpus = sockets * cores * threads;
    const uuid = smbiosUuid(spec.uuid, spec.mdevs) ?? extras.uuid;
    const kvm = spec.accel === "kvm";
    const topology = el("topology", { sockets, dies: 1, cores, threads });
    const cpu =
        spec.cpu.model === "host"
            ? el("cpu", { mode: "host-passthrough", check: "none" }, [topology])
            : spec.cpu.model === "max"
              ? el("cpu", { mode: "maximum", check: "none" }, [topology])
              : el("cpu", { mode: "custom", match: "exact", check: "none" }, [el("model", { fallback: "forbid" }, [], spec.cpu.model), topology]);

    const os = el("os", {}, [
        el("type", { arch: "x86_64", machine: spec.machine }, [], "hvm"),
        spec.firmware && el("loader", { readonly: "yes", type: "pflash" }, [], spec.firmware.code),
        spec.firmware && el("nvram", { template: extras.varsTemplate ?? spec.firmware.vars }, [], nvramPath(spec.name)),
    ]);
    const features = el("features", {}, [
        el("acpi"),
        el("apic"),
        spec.hideHypervisor && kvm && el("hyperv", { mode: "custom" }, [el("vendor_id", { state: "on", value: spec.hvVendorId })]),
        spec.hideHypervisor && el("kvm", {}, [el("hidden", { state: "on" })]),
    ]);

    const devices: XmlNode[] = [el("emulator", {}, [], EMULATOR)];
    const letters = { virtio: "vd", sata: "sd", nvme: "nvme" } as const;
    const used = { vd: 0, sd: spec.cdrom ? 1 : 0, nvme: 0 };
    spec.disks.forEach((d) => {
        const prefix = letters[d.bus];
        const target = prefix === "nvme" ? `nvme${used.nvme++}n1` : `${prefix}${String.fromCharCode(97 + used[prefix]++)}`;
        devices.push(el("disk", { type: d.path.startsWith("/dev/") ? "block" : "file", device: "disk" }, [
            el("driver", { name: "qemu", type: d.format }),
            el("source", d.path.startsWith("/dev/") ? { dev: d.path } : { file: d.path }),
            el("target", { dev: target, bus: d.bus === "nvme" ? "nvme" : d.bus }),
            d.readOnly && el("readonly"),
        ]));
    });
    if (spec.cdrom) devices.push(el("disk", { type: "file", device: "cdrom" }, [el("driver", { name: "qemu", type: "raw" }), el("source", { file: spec.cdrom }), el("target", { dev: "sda", bus: "sata" }), el("readonly")]));
    if (spec.network.mode !== "none") {
        devices.push(el("interface", { type: spec.network.mode }, [
            el("mac", { address: spec.network.mac ?? deterministicMac(spec.name) }),
            spec.network.mode === "bridge" && el("source", { bridge: spec.network.bridge }),
            el("model", { type: spec.network.model === "virtio-net-pci" ? "virtio" : spec.network.model }),
        ]));
    }
    for (const d of spec.hostDevices) {
        devices.push(el("hostdev", { mode: "subsystem", type: "pci", managed: "no" }, [el("source", {}, [pciSourceAddress(d.address)]), d.romfile && el("rom", { file: d.romfile })]));
    }
    for (const m of spec.mdevs) {
        if (m.address) devices.push(el("hostdev", { mode: "subsystem", type: "pci", managed: "no" }, [el("source", {}, [pciSourceAddress(m.address)])]));
        else devices.push(el("hostdev", { mode: "subsystem", type: "mdev", managed: "no", model: "vfio-pci", display: m.display === undefined ? undefined : m.display ? "on" : "off" }, [el("source", {}, [el("address", { uuid: m.uuid })])]));
    }
    const sm = spec.sharedMemory;
    const shm = sm ? shmemName(sm.path) : undefined;
    if (sm && shm) devices.push(el("shmem", { name: shm }, [el("model", { type: "ivshmem-plain" }), el("size", { unit: "M" }, [], sm.sizeMb)]));
    devices.push(el("memballoon", { model: "none" }));

    const qemuArgs: string[] = [];
    if (sm && !shm) {
        qemuArgs.push("-device", JSON.stringify({ driver: "ivshmem-plain", id: "shmem0", memdev: "looking-glass" }));
        qemuArgs.push("-object", JSON.stringify({ "qom-type": "memory-backend-file", id: "looking-glass", "mem-path": sm.path, size: sm.sizeMb * 1024 * 1024, share: true }));
    }
    qemuArgs.push(...spec.extraArgs);

    return el("domain", { type: kvm ? "kvm" : "qemu", ...(qemuArgs.length ? { "xmlns:qemu": QEMU_NS } : {}) }, [
        el("name", {}, [], spec.name),
        uuid && el("uuid", {}, [], uuid),
        // KiB, the unit libvirt writes back, so an unchanged domain reads back equal.
        el("memory", { unit: "KiB" }, [], spec.memoryMb * 1024),
        el("currentMemory", { unit: "KiB" }, [], spec.memoryMb * 1024),
        spec.hugepages && el("memoryBacking", {}, [el("hugepages")]),
        el("vcpu", { placement: "static" }, [], vcpus),
        extras.pinning?.length && el("cputune", {}, extras.pinning.map((c, i) => el("vcpupin", { vcpu: i, cpuset: c }))),
        os,
        features,
        cpu,
        el("on_poweroff", {}, [], "destroy"),
        el("on_reboot", {}, [], "restart"),
        el("on_crash", {}, [], "destroy"),
        el("devices", {}, devices),
        qemuArgs.length > 0 && el("qemu:commandline", {}, qemuArgs.map((v) => el("qemu:arg", { value: v }))),
    ]);
}

const escape = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/'/g, "&apos;").replace(/"/g, "&quot;");

/** A tree as XML text, two-space indented, attributes in single quotes as libvirt writes them. */
export function renderXml(n: XmlNode, indent = ""): string {
    const attrs = Object.entries(n.attrs).map(([k, v]) => ` ${k}='${escape(v)}'`).join("");
    if (!n.children.length && n.text === undefined) return `${indent}<${n.tag}${attrs}/>\n`;
    if (!n.children.length) return `${indent}<${n.tag}${attrs}>${escape(n.text!)}</${n.tag}>\n`;
    return `${indent}<${n.tag}${attrs}>\n${n.children.map((c) => renderXml(c, indent + "  ")).join("")}${indent}</${n.tag}>\n`;
}

/** The domain XML of a VM (see {@link buildDomain}). */
export function buildDomainXml(spec: VmSpec, extras: DomainExtras = {}): string {
    return renderXml(buildDomain(spec, extras));
}

const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: "", preserveOrder: true, parseTagValue: false, parseAttributeValue: false, trimValues: true });

/** XML text → tree (fast-xml-parser, document order kept). Throws on text that is not one element. */
export function parseXml(text: string): XmlNode {
    const convert = (item: any): XmlNode | undefined => {
        const tag = Object.keys(item).find((k) => k !== ":@");
        if (!tag || tag.startsWith("?") || tag === "#text" || tag === "#comment") return undefined;
        const kids: any[] = item[tag] ?? [];
        const texts = kids.filter((k) => "#text" in k).map((k) => String(k["#text"]));
        return { tag, attrs: { ...(item[":@"] ?? {}) }, children: kids.map(convert).filter((c): c is XmlNode => !!c), ...(texts.length ? { text: texts.join("") } : {}) };
    };
    const roots = (parser.parse(text) as any[]).map(convert).filter((c): c is XmlNode => !!c);
    if (roots.length !== 1) throw new Error(`expected one XML document element, found ${roots.length}`);
    return roots[0];
}

/** The `<uuid>` of a domain's XML text, or undefined (none, or text that does not parse). */
export function domainUuid(text: string): string | undefined {
    try {
        return parseXml(text).children.find((c) => c.tag === "uuid")?.text?.trim().toLowerCase() || undefined;
    } catch {
        return undefined;
    }
}

/** Memory sizes with libvirt's units (formatdomain "Memory Allocation": b, KiB/K, MiB/M, GiB/G...) → bytes. */
const UNIT: Record<string, number> = { b: 1, bytes: 1, k: 1024, kib: 1024, kb: 1000, m: 1024 ** 2, mib: 1024 ** 2, mb: 1e6, g: 1024 ** 3, gib: 1024 ** 3, gb: 1e9, t: 1024 ** 4, tib: 1024 ** 4 };
const bytes = (n: XmlNode): number | undefined => (n.text !== undefined && /^\d+$/.test(n.text.trim()) ? Number(n.text.trim()) * (UNIT[(n.attrs.unit ?? "KiB").toLowerCase()] ?? NaN) : undefined);

/** Device elements whose number is ours to decide: one more or one fewer in the defined domain is drift. */
const COUNTED = new Set(["hostdev", "shmem", "disk", "interface", "qemu:arg", "vcpupin"]);

/** Whether an attribute libvirt shows equals ours: machine `q35` is libvirt's `pc-q35-X.Y`; hex numbers by value. */
function sameAttr(tag: string, key: string, ours: string, theirs: string | undefined): boolean {
    if (theirs === ours) return true;
    if (theirs === undefined) return false;
    if (tag === "type" && key === "machine" && ours === "q35") return /^pc-q35-\d+\.\d+$/.test(theirs);
    if (/^0x[0-9a-f]+$/i.test(ours) && /^0x[0-9a-f]+$/i.test(theirs)) return parseInt(ours, 16) === parseInt(theirs, 16);
    return false;
}

/**
 * The parts of the defined domain (`theirs`, `virsh dumpxml --inactive`) that differ from ours, as paths such as
 * `memory`, `devices/hostdev[1]`, `devices/shmem[0]` (missing or changed) or `devices/hostdev[2] (not ours)`.
 * What libvirt adds by itself (guest PCI addresses, aliases, controllers, defaults) is not drift: only what we
 * wrote is compared, plus the number of the {@link COUNTED} elements. Pure.
 */
export function domainDrift(ours: XmlNode, theirs: XmlNode): string[] {
    const out: string[] = [];
    const walk = (o: XmlNode, t: XmlNode, at: string) => {
        for (const [k, v] of Object.entries(o.attrs)) {
            // A size's unit is compared with its value, in bytes (libvirt may write it back in another unit).
            if (k.startsWith("xmlns") || (k === "unit" && o.text !== undefined)) continue;
            if (!sameAttr(o.tag, k, v, t.attrs[k])) return void out.push(at || o.tag);
        }
        if (o.text !== undefined) {
            const ob = o.attrs.unit !== undefined || o.tag === "memory" ? bytes(o) : undefined;
            const same = ob !== undefined ? ob === bytes(t) : o.text.trim() === (t.text ?? "").trim();
            if (!same) return void out.push(at || o.tag);
        }
        const tags = [...new Set(o.children.map((c) => c.tag))];
        for (const tag of tags) {
            const os = o.children.filter((c) => c.tag === tag);
            const ts = t.children.filter((c) => c.tag === tag);
            os.forEach((c, i) => {
                const p = `${at ? at + "/" : ""}${tag}${os.length > 1 || COUNTED.has(tag) ? `[${i}]` : ""}`;
                if (!ts[i]) out.push(`${p} (missing)`);
                else walk(c, ts[i], p);
            });
            if (COUNTED.has(tag)) for (let i = os.length; i < ts.length; i++) out.push(`${at ? at + "/" : ""}${tag}[${i}] (not ours)`);
        }
        for (const tag of COUNTED) {
            if (tags.includes(tag)) continue;
            t.children.filter((c) => c.tag === tag).forEach((_, i) => out.push(`${at ? at + "/" : ""}${tag}[${i}] (not ours)`));
        }
    };
    walk(ours, theirs, "");
    return out;
}
