import * as fs from "fs";
import * as pulumi from "@pulumi/pulumi";
import { BootConfig } from "./bootConfig";
import { HostDefinition, HostDefinitionError, checkHostDefinition, loadHostDefinition } from "./hostDefinition";
import { HostPlan, PlannedResource, PlannedType, mapRefs, planHost, refOutputs, resolveOutputRef } from "./hostPlan";
import { IommuBinding } from "./iommuBinding";
import { KvmfrDevice } from "./kvmfrDevice";
import { MdevInstance } from "./mdevInstance";
import { PassthroughVm } from "./passthroughVm";
import { ConnectionArgs } from "./types";
import { VirtualFunctions } from "./virtualFunctions";

export type VfioHostResource = BootConfig | IommuBinding | VirtualFunctions | MdevInstance | KvmfrDevice | PassthroughVm;

export interface VfioHostOptions extends pulumi.ComponentResourceOptions {
    /**
     * Connection settings merged over the definition's `connection` (which holds no secrets), e.g. a password or a
     * private key from Pulumi config: `{ privateKey: config.requireSecret("sshKey") }`. Stored as a secret.
     */
    connection?: pulumi.Input<Partial<ConnectionArgs>>;
}

const CONSTRUCTORS: Record<PlannedType, new (name: string, args: any, opts?: pulumi.CustomResourceOptions) => VfioHostResource> = {
    BootConfig,
    IommuBinding,
    VirtualFunctions,
    MdevInstance,
    KvmfrDevice,
    PassthroughVm,
};

/**
 * Converges one GPU-passthrough host described by a host definition (host.yaml, or the same shape in TypeScript):
 * its bindings, SR-IOV virtual functions, mdevs, kvmfr devices and VMs, as child resources named
 * `<definition name>-<entry>` (the definition's `name`; a host file's defaults to the file's name without `.yaml`,
 * and a definition without one takes the component's name).
 *
 * The definition is checked first (schema, references by name, devices claimed twice), so a bad file fails the
 * program at `pulumi preview` with file, line and column before anything changes. VMs depend on the devices they
 * use and are replaced along with any of them, so `pulumi up` starts them last and `pulumi destroy` (or a changed
 * mdev type) stops them first.
 *
 * ## Example Usage
 *
 * ```typescript
 * import * as pulumi from "@pulumi/pulumi";
 * import * as vfio from "pulumi-vfio";
 *
 * // host.yaml: bindings, mdevs, vms ... (see schema/host.schema.json); `pulumi-vfio init` writes a first one.
 * const host = new vfio.VfioHost("workstation", vfio.loadHostDefinition("host.yaml"));
 * export const vms = host.vmCommandLines;
 * ```
 */
export class VfioHost extends pulumi.ComponentResource {
    /** The definition as checked (with `name` defaulted). */
    public readonly definition: HostDefinition;
    /** What was planned: every child resource, its inputs, dependencies and replacements. */
    public readonly plan: HostPlan;
    /** The child resources by planned name (`<definition name>-<entry>`). */
    public readonly resources: Record<string, VfioHostResource>;
    /** Each VM's QEMU command line, by entry name under `vms`. */
    public readonly vmCommandLines: pulumi.Output<Record<string, string[]>>;
    /** Each binding's `/dev/vfio/<group>`, by entry name under `bindings`. */
    public readonly vfioDevices: pulumi.Output<Record<string, string | null>>;

    /**
     * @param name The component's name in Pulumi. Children are named after the definition's `name` (this name only
     *   when the definition has none); children named after this name by older versions are carried over by alias.
     * @param definition A definition (e.g. from {@link loadHostDefinition}) or the path of a host file.
     * @throws HostDefinitionError when the definition has problems (each with its position when it came from a file).
     */
    constructor(name: string, definition: HostDefinition | string, opts: VfioHostOptions = {}) {
        const { connection: connectionOverride, ...componentOpts } = opts;
        super("pulumi-vfio:index:VfioHost", name, {}, componentOpts);
        const def = typeof definition === "string" ? loadHostDefinition(definition) : definition;
        if (typeof definition !== "string") {
            const problems = checkHostDefinition(def);
            if (problems.length) throw new HostDefinitionError(problems);
        }
        // One naming rule for both forms (the root program over host.yaml and a TypeScript program): children are
        // `<definition name>-<entry>`, whatever the component is called, so moving a host between the two forms
        // renames nothing (a renamed binding would be released and bound again, its VM restarted). A definition
        // without a name takes the component's.
        const hostName = def.name ?? name;
        this.definition = { ...def, name: hostName };
        const ctx = { project: pulumi.getProject(), stack: pulumi.getStack() };
        this.plan = planHost(hostName, def, ctx);
        // Programs written before the rule named children after the component: alias those names, so their stacks
        // converge without replacing anything (same plan, same order; only the prefix differs).
        const legacy = hostName !== name ? planHost(name, def, ctx).resources.map((r) => r.name) : undefined;
        const connection = hostConnection(this.plan, connectionOverride);

        const made: Record<string, VfioHostResource> = {};
        this.plan.resources.forEach((r, i) => {
            made[r.name] = this.child(r, made, connection, legacy?.[i]);
        });
        this.resources = made;

        const byEntry = <T>(section: string, pick: (r: VfioHostResource) => pulumi.Output<T>) => {
            const rs = this.plan.resources.filter((r) => r.entry.startsWith(`${section}.`) && !r.entry.includes("["));
            return pulumi.all(rs.map((r) => pick(made[r.name]))).apply((vals) => Object.fromEntries(rs.map((r, i) => [r.entry.slice(section.length + 1), vals[i]])));
        };
        this.vmCommandLines = byEntry("vms", (r) => (r as PassthroughVm).commandLine);
        this.vfioDevices = byEntry("bindings", (r) => (r as IommuBinding).vfioDevice);
        this.registerOutputs({ vmCommandLines: this.vmCommandLines, vfioDevices: this.vfioDevices });
    }

    private child(r: PlannedResource, made: Record<string, VfioHostResource>, connection: pulumi.Input<ConnectionArgs> | undefined, legacyName?: string): VfioHostResource {
        const inputs = mapRefs(r.inputs, (ref) => {
            const target = made[ref.$ref] as unknown as Record<string, pulumi.Output<unknown>>;
            const keys = refOutputs(ref);
            return pulumi.all(keys.map((k) => target[k])).apply((vals) => resolveOutputRef(ref, Object.fromEntries(keys.map((k, i) => [k, vals[i]]))));
        }) as Record<string, unknown>;
        if (connection !== undefined) inputs.connection = connection;
        // An output property exists only for the keys a resource passes to Pulumi: a KvmfrDevice sized by
        // width/height must still have a `sizeMb` key, or a VM using it would read undefined for its size.
        if (r.type === "KvmfrDevice" && !("sizeMb" in inputs)) inputs.sizeMb = undefined;
        const deps = r.dependsOn.map((n) => made[n]);
        const replaceWith = r.replaceWith.map((n) => made[n]);
        return new CONSTRUCTORS[r.type](r.name, inputs, {
            parent: this,
            ...(legacyName ? { aliases: [{ name: legacyName }] } : {}),
            ...(deps.length ? { dependsOn: deps } : {}),
            ...(replaceWith.length ? { replaceWith } : {}),
        });
    }
}

/** The definition's connection with `privateKeyFile` read, merged with the option's (secret) settings. */
function hostConnection(plan: HostPlan, override: pulumi.Input<Partial<ConnectionArgs>> | undefined): pulumi.Input<ConnectionArgs> | undefined {
    const c = plan.connection;
    if (!c && override === undefined) return undefined;
    const base: Record<string, unknown> = {};
    if (c) {
        const { privateKeyFile, ...rest } = c;
        Object.assign(base, rest);
        if (privateKeyFile) {
            try {
                base.privateKey = fs.readFileSync(privateKeyFile, "utf8");
            } catch (e) {
                const code = (e as NodeJS.ErrnoException).code;
                throw new Error(`host ${plan.host}: cannot read connection.privateKeyFile ${privateKeyFile}${code ? ` (${code})` : ""}`);
            }
        }
    }
    if (override === undefined) return base as unknown as ConnectionArgs;
    return pulumi.output(override).apply((o) => ({ ...base, ...o }) as ConnectionArgs);
}

