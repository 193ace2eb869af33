/**
 * virsh(1) as argv over the Host seam (never a shell string), always against libvirt's system QEMU driver
 * (`-c qemu:///system`, the URI virt-manager's "QEMU/KVM" connection uses), and what its answers mean.
 *
 * Facts from libvirt's virsh(1) and seen on the lab's libvirt 9.0 (Debian 12): every failure exits 1 with
 * `error: ...` lines on stderr; an unknown domain is `error: failed to get domain '<name>'`; `domstate` prints one
 * of `running`, `idle`, `paused`, `in shutdown`, `shut off`, `crashed`, `pmsuspended`, `blocked`; `shutdown` only
 * asks the guest (ACPI) and returns at once; `destroy` of a domain that is not running fails with
 * `Requested operation is not valid: domain is not running`; `undefine --nvram` also deletes the NVRAM file.
 */
import type { Op, OpResult } from "../host/types";
import type { VmStatus } from "../vm/spec";

export const LIBVIRT_URI = "qemu:///system";
/** Where the system QEMU driver keeps its autostart links (`virsh autostart`): `<name>.xml` → the domain's config. */
export const AUTOSTART_DIR = "/etc/libvirt/qemu/autostart";

export const virsh = (args: string[], extra: { optional?: boolean; timeoutMs?: number } = {}): Op => ({ op: "exec", argv: ["virsh", "-c", LIBVIRT_URI, ...args], ...extra });

export const define = (file: string) => virsh(["define", file]);
export const start = (name: string) => virsh(["start", name], { timeoutMs: 120_000 });
export const shutdown = (name: string) => virsh(["shutdown", name], { optional: true });
export const destroy = (name: string) => virsh(["destroy", name], { optional: true });
export const undefine = (name: string) => virsh(["undefine", "--nvram", name]);
export const domstate = (name: string) => virsh(["domstate", name]);
export const dumpxml = (name: string) => virsh(["dumpxml", "--inactive", name]);
export const autostart = (name: string, on: boolean) => virsh(on ? ["autostart", name] : ["autostart", "--disable", name]);
export const resume = (name: string) => virsh(["resume", name]);

/** The domain is not defined (virsh's `failed to get domain`, libvirt's VIR_ERR_NO_DOMAIN). */
export function isNoDomain(r: OpResult): boolean {
    return !r.ok && /failed to get domain|Domain not found/.test(r.message ?? "");
}

/** `virsh domstate` → our {@link VmStatus}; an undefined domain → null. */
export function parseDomstate(r: OpResult): VmStatus | null {
    if (isNoDomain(r)) return null;
    if (!r.ok) throw new Error(`virsh domstate: ${r.message ?? `exit ${r.code}`}`);
    switch (r.data.trim()) {
        case "running":
        case "idle":
        case "blocked":
            return "running";
        case "paused":
            return "paused";
        case "in shutdown":
            return "shutdown";
        case "shut off":
            return "stopped";
        case "crashed":
            return "guest-panicked";
        case "pmsuspended":
            return "suspended";
        default:
            return "unknown";
    }
}

/** virsh's error lines as one message (`error: ` prefixes dropped). */
export function virshError(r: OpResult): string {
    return (r.message ?? "").replace(/ \| /g, "\n").split("\n").map((l) => l.replace(/^error: /, "").trim()).filter(Boolean).join(": ") || `exit status ${r.code}`;
}
