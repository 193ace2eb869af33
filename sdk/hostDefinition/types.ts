/**
 * host.yaml's shapes (the entries VfioHost turns into resources) and the problem type every check reports.
 * The JSON Schema (schema/host.schema.json) is what a file is checked against; the entries' shapes are generated from
 * the resource schemas it refers to (provider/generated/inputs.ts).
 */
import type { BootConfigInputs } from "../../provider/bootConfig";

import type {
    IommuBindingSchemaInputs,
    KvmfrDeviceSchemaInputs,
    MdevInstanceSchemaInputs,
    PassthroughVmSchemaInputs,
    SharedMemoryInput,
    VirtualFunctionsSchemaInputs,
} from "../../provider/generated/inputs";

/** How to reach the host over SSH (no secrets: an ssh-agent, or a key file read when the program runs). */
export interface HostConnection {
    host: string;
    /** Default 22. */
    port?: number;
    /** Default root; others need passwordless sudo. */
    user?: string;
    /** Expected host key (`ssh-ed25519 AAAA...` or `SHA256:...`); absent: the key must be in known_hosts, as for ssh. */
    hostKey?: string;
    /** `"insecure-skip"` accepts any host key (see ConnectionArgs.hostKeyCheck). Default `"known-hosts"`. */
    hostKeyCheck?: "known-hosts" | "insecure-skip";
    /** A private key file on the machine running pulumi; relative paths are relative to the host file. */
    privateKeyFile?: string;
    /** ssh-agent socket. Default SSH_AUTH_SOCK. */
    agentSocketPath?: string;
    /** Seconds per dial attempt. Default 15. */
    perDialTimeout?: number;
    /** Dial attempts. Default 10. */
    dialErrorLimit?: number;
}

// An entry is its resource's inputs without `connection` (the host's applies), as schema/host.schema.json says with
// `"$ref": "<resource>.schema.json", "properties": {"connection": false}`; the shapes are generated from those schemas.

/** An IommuBinding's inputs, without the connection (the host's applies). */
export interface BindingEntry extends Omit<IommuBindingSchemaInputs, "connection"> {}

/** A VirtualFunctions' inputs, without the connection. */
export interface VirtualFunctionsEntry extends Omit<VirtualFunctionsSchemaInputs, "connection"> {}

/** An MdevInstance's inputs, without the connection. */
export interface MdevEntry extends Omit<MdevInstanceSchemaInputs, "connection"> {}

/** A KvmfrDevice's inputs, without the connection. */
export interface KvmfrEntry extends Omit<KvmfrDeviceSchemaInputs, "connection"> {}

/** A binding a VM passes through: its name under `bindings`, optionally with per-device QEMU options. */
export type VmDeviceRef = string | { binding: string; xVga?: boolean; romfile?: string };
/** An mdev a VM uses: its name under `mdevs`. */
export type VmMdevRef = string | { mdev: string; display?: boolean };
/** VF `index` of the `virtualFunctions` entry `from`. */
export interface VmVirtualFunctionRef {
    from: string;
    index: number;
}

/** A PassthroughVm's inputs (without the connection), with devices named instead of given. */
export interface VmEntry extends Omit<PassthroughVmSchemaInputs, "connection" | "name" | "devices" | "mdevs" | "sharedMemory"> {
    /** QEMU's -name; default the entry's name. */
    name?: string;
    devices?: VmDeviceRef[];
    virtualFunctions?: VmVirtualFunctionRef[];
    mdevs?: VmMdevRef[];
    /** The name of a `kvmfr` entry, or a /dev/shm file. */
    sharedMemory?: string | SharedMemoryInput;
}

/** A BootConfig's inputs, without the connection (the host's applies). */
export type BootConfigEntry = Omit<BootConfigInputs, "connection" | "plan">;

/** A host as host.yaml describes it (see schema/host.schema.json). */
export interface HostDefinition {
    /** The host's name in Pulumi (resource names are `<name>-<entry>`). */
    name?: string;
    /** SSH connection; absent: the machine running pulumi. */
    connection?: HostConnection;
    /** The boot configuration (a BootConfig named `<name>-boot`); see schema/boot-config.schema.json. */
    bootConfig?: BootConfigEntry;
    bindings?: Record<string, BindingEntry>;
    virtualFunctions?: Record<string, VirtualFunctionsEntry>;
    mdevs?: Record<string, MdevEntry>;
    kvmfr?: Record<string, KvmfrEntry>;
    vms?: Record<string, VmEntry>;
}

export const SECTIONS = ["bindings", "virtualFunctions", "mdevs", "kvmfr", "vms"] as const;
export type Section = (typeof SECTIONS)[number];

/** One thing wrong with a host definition, with where it is when it came from a file. */
export interface HostProblem {
    file?: string;
    /** 1-based. */
    line?: number;
    /** 1-based. */
    column?: number;
    /** The offending key as a dotted path: `vms.win11.devices[0]`, `bindings.gpu.drver`. */
    path: string;
    message: string;
}

export function formatProblem(p: HostProblem): string {
    const where = p.file ? `${p.file}${p.line ? `:${p.line}:${p.column}` : ""}: ` : "";
    return `${where}${p.path ? `${p.path}: ` : ""}${p.message}`;
}

/** A host definition that cannot be used; `problems` has every one found, in file order. */
export class HostDefinitionError extends Error {
    constructor(public readonly problems: HostProblem[]) {
        super(`${problems.length === 1 ? "1 problem" : `${problems.length} problems`} in the host definition:\n` + problems.map((p) => "  " + formatProblem(p)).join("\n"));
        this.name = "HostDefinitionError";
    }
}
