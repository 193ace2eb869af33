/**
 * Runs a Pulumi program (the root program, an example) in this process under `pulumi.runtime.setMocks`, inside a
 * real root Stack resource, and records what it registers the way the engine receives it: type, name, parent URN,
 * `dependsOn` URNs, `replaceWith` URNs and inputs. VfioHost components are captured too (through a stack
 * transformation), so engine tests can replay their plans through the real dynamic-provider plugin.
 */
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import type { VfioHost } from "../../sdk/vfioHost";

export interface Registration {
    urn: string;
    type: string;
    name: string;
    custom: boolean;
    parent: string;
    /** URNs from `dependsOn` and from Outputs used as inputs (the engine's dependency list). */
    dependencies: string[];
    replaceWith: string[];
    /** Former names this resource answers to (`aliases`: by URN, or by the name of an alias spec). */
    aliases: string[];
    inputs: Record<string, any>;
}

export interface ProgramRun {
    registrations: Registration[];
    hosts: VfioHost[];
    /** The stack outputs (the program's exports). */
    outputs: Record<string, any>;
}

export interface RunOptions {
    project: string;
    stack?: string;
    /** Plain config values by key (without the project prefix); objects are passed as JSON. */
    config?: Record<string, unknown>;
    /** The program's entry file inside `dir`. Default `index.ts`. */
    main?: string;
}

const addressOf = (d: unknown) => (typeof d === "string" ? (d.length === 7 ? `0000:${d}` : d).toLowerCase() : "0000:0b:00.0");

/** Outputs the way the providers shape them, so references between resources resolve to realistic values. */
export function mockOutputs(type: string, inputs: Record<string, any>): Record<string, unknown> {
    if (type.endsWith(":IommuBinding")) {
        const address = addressOf(inputs.device);
        const group = 10 + (parseInt(address.slice(5, 7), 16) % 50);
        return { address, members: [{ address, managed: true }], group, vfioDevice: `/dev/vfio/${group}` };
    }
    if (type.endsWith(":VirtualFunctions")) {
        const pf = addressOf(inputs.physicalFunction);
        const addresses = Array.from({ length: inputs.count }, (_, i) => `${pf.slice(0, 11)}${i + 1}`);
        return { physicalFunction: pf, addresses, totalVfs: 8 };
    }
    if (type.endsWith(":MdevInstance")) return { typeId: inputs.type ?? "chosen-by-vram", backend: "mdev", address: null, sysfsPath: `/sys/bus/mdev/devices/${inputs.uuid}` };
    if (type.endsWith(":KvmfrDevice")) return { path: `/dev/kvmfr${inputs.index}`, sizeMb: inputs.sizeMb ?? 64 };
    if (type.endsWith(":PassthroughVm")) return { commandLine: ["qemu-system-x86_64", "-name", inputs.name], status: "running" };
    return {};
}

export async function runProgram(dir: string, opts: RunOptions): Promise<ProgramRun> {
    const stack = opts.stack ?? "dev";
    await pulumi.runtime.setMocks(
        {
            newResource: (args) => ({ id: args.custom ? `${args.name}-id` : undefined, state: { ...args.inputs, ...mockOutputs(args.type, args.inputs ?? {}) } }),
            call: (args) => args.inputs,
        },
        opts.project,
        stack,
        false,
    );
    pulumi.runtime.setAllConfig(Object.fromEntries(Object.entries(opts.config ?? {}).map(([k, v]) => [`${opts.project}:${k}`, typeof v === "string" ? v : JSON.stringify(v)])));

    const registrations: Registration[] = [];
    const monitor = pulumi.runtime.getMonitor() as any;
    const register = monitor.registerResource.bind(monitor);
    monitor.registerResource = (req: any, callback: any) => {
        const urn = `urn:pulumi:${stack}::${opts.project}::${req.getType()}::${req.getName()}`;
        registrations.push({
            urn,
            type: req.getType(),
            name: req.getName(),
            custom: req.getCustom(),
            parent: req.getParent(),
            dependencies: req.getDependenciesList(),
            replaceWith: req.getReplaceWithList(),
            aliases: [...(req.getAliasurnsList?.() ?? []), ...(req.getAliasesList?.() ?? []).map((a: any) => a.getSpec?.()?.getName() ?? a.getUrn?.())].filter(Boolean),
            inputs: req.getObject()?.toJavaScript() ?? {},
        });
        return register(req, callback);
    };

    const hosts: VfioHost[] = [];
    const cwd = process.cwd();
    process.chdir(dir);
    let outputs: Record<string, any>;
    let failure: unknown;
    try {
        outputs = (await pulumi.runtime.runInPulumiStack(async () => {
            pulumi.runtime.registerStackTransformation((a) => {
                if (a.type === "pulumi-vfio:index:VfioHost") hosts.push(a.resource as VfioHost);
                return undefined;
            });
            let exported: Record<string, unknown> = {};
            try {
                const file = path.resolve(dir, opts.main ?? "index.ts");
                if (typeof jest !== "undefined") {
                    jest.isolateModules(() => {
                        exported = require(file);
                    });
                } else {
                    // Plain node (npm run demo): run the program again on every call, as `pulumi up` would.
                    delete require.cache[require.resolve(file)];
                    exported = require(file);
                }
            } catch (e) {
                // A program that throws fails `pulumi preview`; here it fails the run (not the whole jest worker).
                failure = e;
            }
            return exported;
        })) ?? {};
        await (pulumi.runtime as unknown as { waitForRPCs(): Promise<void> }).waitForRPCs();
    } finally {
        process.chdir(cwd);
    }
    if (failure) throw failure;
    return { registrations, hosts, outputs };
}

/** The short name of a URN (its last part). */
export const nameOf = (urn: string) => urn.slice(urn.lastIndexOf("::") + 2);
