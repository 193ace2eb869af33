/**
 * Mediated devices through sysfs (Documentation/driver-api/vfio-mediated-device.rst) and NVIDIA's vendor VFIO
 * vGPUs (release 17+, which have no mdev bus), plus mdevctl's persistent configuration format.
 *
 * - A parent registers under `/sys/class/mdev_bus/<parent>`; its types are `mdev_supported_types/<type-id>/`
 *   with `create`, `name`, `description` (optional: mtty has none), `device_api`, `available_instances`, `devices/`.
 * - Create: write a UUID to `create`. Observed on the lab kernel (6.1): a UUID already used by any mdev, on any
 *   parent or type → EEXIST; a malformed UUID → EINVAL; no instance left (mtty and mbochs) → ENOSPC; an upper-case
 *   UUID is accepted and the device is named in lower case.
 * - Remove: write `1` to `/sys/bus/mdev/devices/<uuid>/remove` (`0` is accepted and does nothing, anything
 *   non-numeric → EINVAL, a gone device → ENOENT). While a process holds `/dev/vfio/<group>` the write blocks
 *   until it lets go ("Device is currently in use, task ... blocked until device is released").
 * - The mdev's IOMMU group and `/dev/vfio/<group>` exist from creation on (the vendor driver binds at once).
 * - NVIDIA vGPU 17+: after the PF's VFs are enabled, write a type id to
 *   `/sys/bus/pci/devices/<VF>/nvidia/current_vgpu_type` (the choices are listed, one `<id> : <name>` per line, in
 *   `creatable_vgpu_types`); `0` clears it.
 */
import { createHash } from "crypto";
import { BatchQuery, Part } from "../host/query";
import { Op, OpResult } from "../host/types";
import { parseAddress } from "./pci";

export const MDEV_BUS = "/sys/class/mdev_bus";
export const MDEV_DEVICES = "/sys/bus/mdev/devices";
export const MDEVCTL_DIR = "/etc/mdevctl.d";
/** Where mdevctl can be installed (Debian: /usr/bin; upstream's Makefile and Fedora: /usr/sbin). */
export const MDEVCTL_BINARIES = ["/usr/sbin/mdevctl", "/usr/bin/mdevctl"];
/**
 * mdevctl starts `start: auto` devices from a udev rule when their parent registers. The same file name in an
 * earlier directory overrides the later ones (udev(7)), so the first existing one is the rule in effect.
 */
export const MDEVCTL_RULE_NAME = "60-mdevctl.rules";
export const MDEVCTL_RULE_DIRS = ["/etc/udev/rules.d", "/run/udev/rules.d", "/usr/lib/udev/rules.d", "/lib/udev/rules.d"];
export const MDEVCTL_RULE_OVERRIDE = `/etc/udev/rules.d/${MDEVCTL_RULE_NAME}`;

// ------------------------------------------------------------------------------------------------ UUIDs

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * The canonical (lower-case) form of an mdev UUID. The kernel names the device in lower case whatever case was
 * written, so state and paths use that form.
 * @throws Error naming the value and the expected form.
 */
export function parseUuid(input: string): string {
    const s = typeof input === "string" ? input.toLowerCase() : "";
    if (!UUID.test(s)) {
        throw new Error(`${JSON.stringify(input)} is not a UUID: write it as 8-4-4-4-12 hex digits, e.g. 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001`);
    }
    return s;
}

export function isUuid(input: unknown): boolean {
    return typeof input === "string" && UUID.test(input.toLowerCase());
}

/**
 * A name-based UUID, version 5 (RFC 4122 §4.3: SHA-1 of the namespace's 16 bytes followed by the name's UTF-8
 * bytes, version and variant bits set). Node's crypto has randomUUID only; this is the whole algorithm.
 */
export function uuidV5(name: string, namespace: string): string {
    const ns = Buffer.from(parseUuid(namespace).replace(/-/g, ""), "hex");
    const hash = createHash("sha1").update(ns).update(Buffer.from(name, "utf8")).digest();
    const b = hash.subarray(0, 16);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = b.toString("hex");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The namespace of pulumi-vfio's derived mdev UUIDs (a fixed random UUID; changing it would replace every mdev). */
export const MDEV_UUID_NAMESPACE = "5b0c8e52-6a5e-4a8e-9d0c-3f1f7c2e9a41";

/**
 * The UUID an MdevInstance gets when none is given: the same project, stack and resource name always give the
 * same UUID, so a create retried after a failure finds (and adopts) the instance it made instead of leaking a
 * second one, as Proxmox does for its VMs' mdevs.
 */
export function defaultMdevUuid(project: string, stack: string, resourceName: string): string {
    return uuidV5(`pulumi-vfio/MdevInstance/${project}/${stack}/${resourceName}`, MDEV_UUID_NAMESPACE);
}

// ------------------------------------------------------------------------------------------------ names

const PARENT_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$/;
const TYPE_ID = /^[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,127}$/;
const ATTR_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(\/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})?$/;

/**
 * A parent as the input names it: a PCI address (normalized, as the kernel names PCI parents) or the name of a
 * non-PCI parent under /sys/class/mdev_bus (`mtty`, `mbochs`).
 * @throws Error when it is neither.
 */
export function parseParent(input: string): { name: string; pci: boolean } {
    if (typeof input === "string" && /^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$/.test(input)) {
        return { name: parseAddress(input), pci: true };
    }
    if (typeof input !== "string" || !PARENT_NAME.test(input)) {
        throw new Error(`${JSON.stringify(input)} is not an mdev parent: give a PCI address (0000:00:02.0) or a name under ${MDEV_BUS} (letters, digits, '_', '-', '.', ':')`);
    }
    return { name: input, pci: false };
}

/** Type ids become path components (`mdev_supported_types/<id>`). */
export function assertTypeId(id: string): void {
    if (!TYPE_ID.test(id)) throw new Error(`${JSON.stringify(id)} is not an mdev type id (letters, digits, '_', '-', '.', ':', '+'), e.g. nvidia-63 or mtty-2`);
}

/** Attribute names become paths under the device (`nvidia/vgpu_params`): one optional subdirectory, no dots first. */
export function assertAttrName(name: string): void {
    if (!ATTR_NAME.test(name)) throw new Error(`${JSON.stringify(name)} is not an mdev attribute name (a file under the device, e.g. nvidia/vgpu_params)`);
}

// ------------------------------------------------------------------------------------------------ types

export interface MdevType {
    /** `mtty-2`, `nvidia-63`; for NVIDIA vGPU 17+ the numeric id (`1145`). */
    id: string;
    /** The type's `name` (`Dual port serial`, `GRID P40-2Q`, `NVIDIA L40S-2Q`). */
    name: string;
    /** The type's `description`, empty when the driver has none. */
    description: string;
    /** `vfio-pci` for every PCI-like type. */
    deviceApi: string;
    /** Instances that can still be created (`available_instances`; for vGPU 17+: free VFs offering the type). */
    available: number;
    /** Video memory in MiB parsed from the description or name, null when it says none (mtty). */
    vramMiB: number | null;
}

/**
 * Video memory of a type in MiB, parsed the way LibVF.IO does (src/libvfio/control/iommu.nim): NVIDIA mdev types
 * say `framebuffer=2048M` in their description, Intel GVT-g `high_gm_size: 384MB`; the kernel's mbochs sample
 * says `64 MB video memory`. NVIDIA profile names end in the size in GiB and a series letter (`GRID P40-2Q`,
 * `NVIDIA L40S-24Q`, MIG-backed `NVIDIA H200X-1-18C`), which is all vGPU 17+ types offer.
 */
export function vramOf(t: { name: string; description: string }): number | null {
    const d = t.description ?? "";
    const fb = /framebuffer\s*=\s*(\d+)\s*M/i.exec(d);
    if (fb) return Number(fb[1]);
    const gvt = /high_gm_size:\s*(\d+)\s*MB/i.exec(d);
    if (gvt) return Number(gvt[1]);
    const mem = /(\d+)\s*(MB|MiB|GB|GiB)\b[^,\n]*memory/i.exec(d) ?? /memory[^\d\n]*(\d+)\s*(MB|MiB|GB|GiB)\b/i.exec(d);
    if (mem) return Number(mem[1]) * (/^G/i.test(mem[2]) ? 1024 : 1);
    const profile = /-(\d+)[A-Z]{1,2}$/.exec((t.name ?? "").trim());
    if (profile && /(GRID|NVIDIA|Tesla|Quadro)/i.test(t.name)) return Number(profile[1]) * 1024;
    return null;
}

export interface VramBounds {
    /** Lower bound in MiB, inclusive. Default 0. */
    min?: number;
    /** Upper bound in MiB, inclusive. Default no limit. */
    max?: number;
}

export function fitsVram(t: MdevType, b: VramBounds): boolean {
    return t.vramMiB !== null && t.vramMiB >= (b.min ?? 0) && (b.max === undefined || t.vramMiB <= b.max);
}

/**
 * Types that fit the bounds, in the stable order the choice is made in: smallest video memory first, then by id,
 * so the first fit is also the smallest one that satisfies `min`.
 */
export function typesByVram(types: MdevType[], b: VramBounds): MdevType[] {
    return types.filter((t) => fitsVram(t, b)).sort((x, y) => x.vramMiB! - y.vramMiB! || x.id.localeCompare(y.id));
}

export function describeType(t: MdevType): string {
    const what = [t.name && t.name !== t.id ? t.name : "", t.vramMiB !== null ? `${t.vramMiB} MiB` : ""].filter(Boolean).join(", ");
    return `${t.id}${what ? ` (${what})` : ""}: ${t.available} available`;
}

// ------------------------------------------------------------------------------------------------ reading

export const typesDir = (parent: string) => `${MDEV_BUS}/${parent}/mdev_supported_types`;
const typeDir = (parent: string, type: string) => `${typesDir(parent)}/${type}`;

export const listLines = (r: OpResult | undefined): string[] => (r?.ok ? r.data.split("\n").map((s) => s.trim()).filter(Boolean) : []);
const basename = (p: string) => p.slice(p.lastIndexOf("/") + 1);
/** The last component of a link's target (`.../iommu_groups/8` → 8), or null when the link is absent. */
export const groupOf = (r: OpResult | undefined): number | null => (r?.ok && r.data.trim() ? Number(basename(r.data.trim())) : null);

/**
 * One type's attributes (`name`, `description`, `device_api`, `available_instances`) as a part of `q`. An unreadable
 * `name` (optional in the ABI) falls back to the id, an unreadable count to 0.
 */
export function typeQuery(q: BatchQuery, parent: string, type: string): Part<MdevType> {
    const attr = (a: string) => q.one({ op: "read", path: `${typeDir(parent, type)}/${a}` }, (r) => (r.ok ? r.data.trim() : ""));
    const [name, description, deviceApi, available] = ["name", "description", "device_api", "available_instances"].map(attr);
    return (results) => {
        const t = { id: type, name: name(results) || type, description: description(results), deviceApi: deviceApi(results), available: Number(available(results) || 0) };
        return { ...t, vramMiB: vramOf(t) };
    };
}

/** The UUIDs of a type's instances (its `devices/`), or null when the type does not exist, as a part of `q`. */
export function typeDevicesQuery(q: BatchQuery, parent: string, type: string): Part<string[] | null> {
    return q.one({ op: "list", path: `${typeDir(parent, type)}/devices` }, (r) => (r.ok ? listLines(r) : null));
}

/** What the kernel says about one mdev UUID: where it lives and what it is, or null when no such mdev exists. */
export interface MdevDevice {
    uuid: string;
    /** The parent's name (as under /sys/class/mdev_bus). */
    parent: string;
    typeId: string;
    group: number | null;
}

/** Ops that locate an mdev by UUID (parse with {@link parseMdevDevice}, or compose with {@link mdevDeviceQuery}). */
export function mdevReadOps(uuid: string): Op[] {
    const d = `${MDEV_DEVICES}/${uuid}`;
    return [
        { op: "readlink", path: d },
        { op: "readlink", path: `${d}/mdev_type` },
        { op: "readlink", path: `${d}/iommu_group` },
    ];
}

/**
 * `/sys/bus/mdev/devices/<uuid>` links to `<parent device>/<uuid>`, so the parent is the link's second-to-last
 * component (`../../../devices/virtual/mtty/mtty/<uuid>`, `.../pci0000:00/0000:00:02.0/<uuid>`).
 */
export function parseMdevDevice(uuid: string, r: OpResult[]): MdevDevice | null {
    const [dev, type, group] = r;
    if (!dev?.ok || !dev.data.trim()) return null;
    const parts = dev.data.trim().split("/").filter(Boolean);
    return { uuid, parent: parts[parts.length - 2] ?? "", typeId: type?.ok ? basename(type.data.trim()) : "", group: groupOf(group) };
}

/** The mdev that has `uuid` (any parent), as a part of `q`. */
export function mdevDeviceQuery(q: BatchQuery, uuid: string): Part<MdevDevice | null> {
    return q.add(mdevReadOps(uuid), (r) => parseMdevDevice(uuid, r));
}

// ------------------------------------------------------------------------------------------------ sequences

/** Create: one write of the UUID to the type's `create`. */
export function createOp(parent: string, type: string, uuid: string): Op {
    assertTypeId(type);
    return { op: "write", path: `${typeDir(parent, type)}/create`, data: uuid };
}

/** Remove: `1` to the device's `remove`. Blocks while a process holds its group: check openers first. */
export function removeOp(uuid: string, optional = false): Op {
    return { op: "write", path: `${MDEV_DEVICES}/${uuid}/remove`, data: "1", optional };
}

export interface MdevAttr {
    name: string;
    value: string;
}

/** Attributes are written in order after create, as mdevctl does (`attrs` in its config). */
export function attrOps(uuid: string, attrs: MdevAttr[]): Op[] {
    return attrs.map((a): Op => {
        assertAttrName(a.name);
        return { op: "write", path: `${MDEV_DEVICES}/${uuid}/${a.name}`, data: a.value };
    });
}

// ------------------------------------------------------------------------------------------------ mdevctl

export const mdevctlConfigPath = (parent: string, uuid: string) => `${MDEVCTL_DIR}/${parent}/${uuid}`;

/** mdevctl's own file (src/mdev.rs `to_json`): `mdev_type`, `start`, `attrs` as a list of one-key objects. */
export function mdevctlConfig(type: string, attrs: MdevAttr[], start: "auto" | "manual" = "auto"): string {
    return JSON.stringify({ mdev_type: type, start, attrs: attrs.map((a) => ({ [a.name]: a.value })) }, null, 2);
}

export interface MdevctlConfig {
    type: string;
    start: string;
    attrs: MdevAttr[];
}

export function parseMdevctlConfig(text: string): MdevctlConfig | null {
    try {
        const j = JSON.parse(text);
        if (!j || typeof j.mdev_type !== "string") return null;
        const attrs = Array.isArray(j.attrs) ? j.attrs.flatMap((o: Record<string, unknown>) => Object.entries(o ?? {}).map(([name, value]) => ({ name, value: String(value) }))) : [];
        return { type: j.mdev_type, start: String(j.start ?? "manual"), attrs };
    } catch {
        return null;
    }
}

/** Ops that tell whether mdevctl is installed and whether its boot hook works (parse with {@link parseBootHook}, or
 *  compose with {@link bootHookQuery}). */
export function bootHookOps(): Op[] {
    return [
        ...MDEVCTL_BINARIES.map((p): Op => ({ op: "stat", path: p })),
        ...MDEVCTL_RULE_DIRS.map((d): Op => ({ op: "read", path: `${d}/${MDEVCTL_RULE_NAME}` })),
    ];
}

/** Whether mdevctl is installed and its boot hook works, as a part of `q`. */
export function bootHookQuery(q: BatchQuery): Part<BootHook> {
    return q.add(bootHookOps(), parseBootHook);
}

export interface BootHook {
    /** The mdevctl binary found, or null when mdevctl is not installed. */
    mdevctl: string | null;
    /** The rule in effect (first existing in udev's order), or null. */
    rulePath: string | null;
    /** The program its RUN calls, or null when the rule does not run mdevctl. */
    ruleCalls: string | null;
    /** True when the rule calls an mdevctl that exists: `start: auto` devices come back at boot. */
    works: boolean;
    /**
     * The override that makes it work, when the rule names a path where mdevctl is not: Debian 12's mdevctl 1.2.0
     * installs /usr/bin/mdevctl but its rule runs /usr/sbin/mdevctl, so nothing starts at boot (seen on the lab:
     * `/bin/sh: 1: /usr/sbin/mdevctl: not found` in the journal). Null when nothing needs fixing or it cannot be.
     */
    fix: { path: string; text: string; from: string; to: string } | null;
}

export function parseBootHook(r: OpResult[]): BootHook {
    const present = MDEVCTL_BINARIES.filter((_, i) => r[i]?.ok);
    const mdevctl = present.length ? present[present.length - 1] : null;
    const rules = MDEVCTL_RULE_DIRS.map((d, i) => ({ path: `${d}/${MDEVCTL_RULE_NAME}`, r: r[MDEVCTL_BINARIES.length + i] }));
    const rule = rules.find((x) => x.r?.ok);
    if (!rule) return { mdevctl, rulePath: null, ruleCalls: null, works: false, fix: null };
    const text = rule.r!.data;
    const m = /(\/[^\s'"]*\/mdevctl)\s+start-parent-mdevs/.exec(text);
    const calls = m ? m[1] : null;
    const works = !!calls && MDEVCTL_BINARIES.includes(calls) && present.includes(calls);
    let fix: BootHook["fix"] = null;
    if (calls && !works && mdevctl) {
        fix = { path: MDEVCTL_RULE_OVERRIDE, text: text.split(calls).join(mdevctl), from: calls, to: mdevctl };
    }
    return { mdevctl, rulePath: rule.path, ruleCalls: calls, works, fix };
}

// ------------------------------------------------------------------------------------------------ NVIDIA vGPU 17+

export const NVIDIA_CURRENT = "nvidia/current_vgpu_type";
export const NVIDIA_CREATABLE = "nvidia/creatable_vgpu_types";

/** `creatable_vgpu_types`: an optional `ID : vGPU Name` header, then `<id> : <name>` per line. */
export function parseCreatableVgpuTypes(text: string): { id: string; name: string }[] {
    const out: { id: string; name: string }[] = [];
    for (const line of text.split("\n")) {
        const m = /^\s*(\d+)\s*:\s*(.+?)\s*$/.exec(line);
        if (m) out.push({ id: m[1], name: m[2] });
    }
    return out;
}

export interface VgpuVf {
    index: number;
    address: string;
    /** `current_vgpu_type`: 0 = no vGPU on this VF. */
    current: string;
    creatable: { id: string; name: string }[];
    group: number | null;
}

/** What a function's vGPU files say (see {@link vgpuFilesQuery}). */
export interface VgpuFiles {
    /** `current_vgpu_type`, "0" when none (or unreadable). */
    current: string;
    creatable: { id: string; name: string }[];
    group: number | null;
    /** `current_vgpu_type` was readable: the function exists and the vGPU manager drives it. */
    hasCurrent: boolean;
    /** `creatable_vgpu_types` was readable: a vGPU VF, not a plain SR-IOV one. */
    hasCreatable: boolean;
}

/**
 * A function's vGPU files (`current_vgpu_type`, `creatable_vgpu_types`) and its IOMMU group, as a part of `q`; `dev`
 * is its sysfs directory. The files exist only on a function the NVIDIA vGPU manager drives.
 */
export function vgpuFilesQuery(q: BatchQuery, dev: string): Part<VgpuFiles> {
    return q.add(
        [
            { op: "read", path: `${dev}/${NVIDIA_CURRENT}` },
            { op: "read", path: `${dev}/${NVIDIA_CREATABLE}` },
            { op: "readlink", path: `${dev}/iommu_group` },
        ],
        ([current, creatable, group]) => ({
            current: current?.ok ? current.data.trim() || "0" : "0",
            creatable: creatable?.ok ? parseCreatableVgpuTypes(creatable.data) : [],
            group: groupOf(group),
            hasCurrent: !!current?.ok,
            hasCreatable: !!creatable?.ok,
        }),
    );
}

/** The VF view of a function's vGPU files. */
export const vgpuVf = (index: number, address: string, f: VgpuFiles): VgpuVf => ({ index, address, current: f.current, creatable: f.creatable, group: f.group });
