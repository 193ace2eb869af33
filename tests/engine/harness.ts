/**
 * The engine boundary: spawns the real dynamic-provider plugin (`@pulumi/pulumi/cmd/dynamic-provider`) the way the
 * Pulumi engine does — from the program's directory, with the engine address as its argument, reading the port it
 * prints — and drives it over gRPC (Configure, Check, Diff, Create, Read, Update, Delete) with providers serialized
 * exactly as `pulumi.dynamic.Resource` serializes them.
 *
 * `Engine` on top keeps state per resource like Pulumi does (id, inputs, outputs) and runs the step logic of
 * preview / up / refresh / destroy, so tests can converge a whole program and then inspect the host.
 */
import { ChildProcess, spawn } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as grpc from "@grpc/grpc-js";
import * as pulumi from "@pulumi/pulumi";
import { FakeKernel, fakeLabKernel } from "../fake";
import { REGISTER_MODULE, TEST_MACHINE_ENV } from "../fake/register";
import { ImplementationName, thinProvider } from "../../sdk/provider";

/* eslint-disable @typescript-eslint/no-var-requires */
const provrpc = require("@pulumi/pulumi/proto/provider_grpc_pb");
const provproto = require("@pulumi/pulumi/proto/provider_pb");
const structproto = require("google-protobuf/google/protobuf/struct_pb");

export const REPO = path.resolve(__dirname, "..", "..").replace(/[\\/]dist$/, "");
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

const serialized = new Map<string, Promise<string>>();

/** The `__provider` text a `pulumi.dynamic.Resource` would store for this implementation. */
export function serializedProvider(kind: ImplementationName): Promise<string> {
    if (!serialized.has(kind)) {
        const provider = thinProvider(kind);
        serialized.set(
            kind,
            pulumi.runtime.serializeFunction(() => provider, { allowSecrets: true }).then((sf) => sf.text),
        );
    }
    return serialized.get(kind)!;
}

/** A program directory as a user has it: `node_modules/pulumi-vfio` is the package (here: this repository). */
export function makeProgramDir(): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pulumi-vfio-prog-"));
    fs.mkdirSync(path.join(dir, "node_modules"));
    fs.symlinkSync(REPO, path.join(dir, "node_modules", "pulumi-vfio"));
    fs.writeFileSync(path.join(dir, "Pulumi.yaml"), "name: harness\nruntime: nodejs\n");
    return dir;
}

const clean = (o: unknown) => JSON.parse(JSON.stringify(o ?? {}));

export interface CheckReply {
    inputs: Record<string, any>;
    failures: { property: string; reason: string }[];
}

export class PluginProcess {
    private constructor(
        private readonly child: ChildProcess,
        private readonly client: any,
        public readonly programDir: string,
        private readonly stderrText: () => string,
    ) {}

    /**
     * Start the plugin from `programDir`. With `machineFile`, every host of the plugin is the fake machine in that
     * file (tests/fake/register.ts, loaded with `--require`); without, the plugin reaches real hosts as for a user.
     */
    static async start(machineFile?: string, programDir = makeProgramDir()): Promise<PluginProcess> {
        const entry = path.join(REPO, "node_modules", "@pulumi", "pulumi", "cmd", "dynamic-provider", "index.js");
        const env = { ...process.env, [TEST_MACHINE_ENV]: machineFile ?? "" };
        const fake = machineFile ? ["--require", REGISTER_MODULE] : [];
        const child = spawn(process.execPath, [...fake, entry, "127.0.0.1:1"], { cwd: programDir, env, stdio: ["ignore", "pipe", "pipe"] });
        let err = "";
        child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
        const port = await new Promise<number>((resolve, reject) => {
            let out = "";
            const timer = setTimeout(() => reject(new Error(`plugin did not print its port: ${err}`)), 30_000);
            child.stdout!.on("data", (d: Buffer) => {
                out += d.toString();
                const m = /^(\d+)\s*$/m.exec(out);
                if (m) {
                    clearTimeout(timer);
                    resolve(Number(m[1]));
                }
            });
            child.on("exit", (code) => reject(new Error(`plugin exited (${code}): ${err}`)));
        });
        const client = new provrpc.ResourceProviderClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
        const p = new PluginProcess(child, client, programDir, () => err);
        await p.call("configure", new provproto.ConfigureRequest().setArgs(structproto.Struct.fromJavaScript({})).setAcceptsecrets(true));
        return p;
    }

    get stderr(): string {
        return this.stderrText();
    }

    private call(method: string, req: any): Promise<any> {
        return new Promise((resolve, reject) =>
            this.client[method](req, (err: grpc.ServiceError | null, resp: any) => {
                if (err) {
                    const e = new Error(err.details || err.message) as Error & { code?: number };
                    e.code = err.code;
                    return reject(e);
                }
                resolve(resp);
            }),
        );
    }

    async check(urn: string, olds: object, news: object): Promise<CheckReply> {
        const req = new provproto.CheckRequest().setUrn(urn).setOlds(structproto.Struct.fromJavaScript(clean(olds))).setNews(structproto.Struct.fromJavaScript(clean(news)));
        const resp = await this.call("check", req);
        return {
            inputs: resp.getInputs()?.toJavaScript() ?? {},
            failures: resp.getFailuresList().map((f: any) => ({ property: f.getProperty(), reason: f.getReason() })),
        };
    }

    async diff(urn: string, id: string, olds: object, news: object): Promise<{ changes: "none" | "some" | "unknown"; replaces: string[]; deleteBeforeReplace: boolean }> {
        const req = new provproto.DiffRequest().setUrn(urn).setId(id).setOlds(structproto.Struct.fromJavaScript(clean(olds))).setNews(structproto.Struct.fromJavaScript(clean(news)));
        const resp = await this.call("diff", req);
        const C = provproto.DiffResponse.DiffChanges;
        const ch = resp.getChanges();
        return { changes: ch === C.DIFF_SOME ? "some" : ch === C.DIFF_NONE ? "none" : "unknown", replaces: resp.getReplacesList(), deleteBeforeReplace: resp.getDeletebeforereplace() };
    }

    async create(urn: string, props: object): Promise<{ id: string; props: Record<string, any> }> {
        const resp = await this.call("create", new provproto.CreateRequest().setUrn(urn).setProperties(structproto.Struct.fromJavaScript(clean(props))));
        return { id: resp.getId(), props: resp.getProperties()?.toJavaScript() ?? {} };
    }

    async read(urn: string, id: string, props: object): Promise<{ id: string; props: Record<string, any>; inputs?: Record<string, any> }> {
        const resp = await this.call("read", new provproto.ReadRequest().setUrn(urn).setId(id).setProperties(structproto.Struct.fromJavaScript(clean(props))));
        return { id: resp.getId(), props: resp.getProperties()?.toJavaScript() ?? {}, inputs: resp.getInputs()?.toJavaScript() };
    }

    async update(urn: string, id: string, olds: object, news: object): Promise<Record<string, any>> {
        const req = new provproto.UpdateRequest().setUrn(urn).setId(id).setOlds(structproto.Struct.fromJavaScript(clean(olds))).setNews(structproto.Struct.fromJavaScript(clean(news)));
        const resp = await this.call("update", req);
        return resp.getProperties()?.toJavaScript() ?? {};
    }

    async delete(urn: string, id: string, props: object): Promise<void> {
        await this.call("delete", new provproto.DeleteRequest().setUrn(urn).setId(id).setProperties(structproto.Struct.fromJavaScript(clean(props))));
    }

    async stop(): Promise<void> {
        this.client.close();
        if (this.child.exitCode === null) {
            const exited = new Promise((r) => this.child.once("exit", r));
            this.child.kill("SIGTERM");
            await exited;
        }
        fs.rmSync(this.programDir, { recursive: true, force: true });
    }
}

// ------------------------------------------------------------------------------------------------ fake machine

/**
 * For a test file: before each test a fresh fake lab machine in a state file and the plugin started against it
 * (the plugin and the test see the same machine); after each, both are gone.
 */
export function fakeMachineSuite(initial: () => FakeKernel = fakeLabKernel): {
    readonly plugin: PluginProcess;
    readonly stateFile: string;
    /** The machine as it is now in the state file. */
    machine(): FakeKernel;
    /** Change the machine behind the plugin's back (a user at the console). */
    edit(f: (k: FakeKernel) => void): void;
} {
    let dir = "";
    let plugin: PluginProcess | undefined;
    const stateFile = () => path.join(dir, "machine.json");
    beforeEach(async () => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "pv-engine-"));
        fs.writeFileSync(stateFile(), JSON.stringify(initial().state));
        plugin = await PluginProcess.start(stateFile());
    });
    afterEach(async () => {
        await plugin?.stop();
        fs.rmSync(dir, { recursive: true, force: true });
    });
    const machine = () => fakeLabKernel(JSON.parse(fs.readFileSync(stateFile(), "utf8")));
    return {
        get plugin() {
            return plugin!;
        },
        get stateFile() {
            return stateFile();
        },
        machine,
        edit(f) {
            const k = machine();
            f(k);
            fs.writeFileSync(stateFile(), JSON.stringify(k.state));
        },
    };
}

// ------------------------------------------------------------------------------------------------ engine

export interface ResourceDecl {
    /** Logical name (the URN's last part). */
    name: string;
    kind: ImplementationName;
    /** The type token, e.g. `pulumi-nodejs:dynamic/vfio:IommuBinding`. */
    type: string;
    inputs: Record<string, any>;
}

export interface ResourceState {
    urn: string;
    kind: ImplementationName;
    type: string;
    id: string;
    inputs: Record<string, any>;
    outputs: Record<string, any>;
}

export type StepOp = "create" | "update" | "replace" | "same" | "delete" | "refresh-gone" | "refresh-drift";

export interface Step {
    op: StepOp;
    urn: string;
    /** The inputs check returned (what `pulumi preview` displays). */
    inputs?: Record<string, any>;
    replaces?: string[];
}

export class CheckFailedError extends Error {
    constructor(
        public readonly urn: string,
        public readonly failures: { property: string; reason: string }[],
    ) {
        super(`${urn}: ${failures.map((f) => `${f.property}: ${f.reason}`).join("; ")}`);
    }
}

/**
 * A tiny Pulumi engine: resources are declared in dependency order; `up` walks them (check → diff → create /
 * update / delete-before-replace) and deletes what the program no longer declares, in reverse order;
 * `refresh` reads every resource; `destroy` deletes in reverse order. State is kept like Pulumi keeps it.
 */
export class Engine {
    state: ResourceState[] = [];

    constructor(
        public readonly plugin: PluginProcess,
        public readonly stack = "dev",
        public readonly project = "harness",
    ) {}

    urn(d: { type: string; name: string }): string {
        return `urn:pulumi:${this.stack}::${this.project}::${d.type}::${d.name}`;
    }

    private async news(d: ResourceDecl): Promise<Record<string, any>> {
        return { ...d.inputs, __provider: await serializedProvider(d.kind) };
    }

    /** The engine's first step for a declared resource: Check against its stored inputs; failures stop the run. */
    private async checkStep(d: ResourceDecl): Promise<{ urn: string; old: ResourceState | undefined; checked: CheckReply }> {
        const urn = this.urn(d);
        const old = this.state.find((s) => s.urn === urn);
        const checked = await this.plugin.check(urn, old?.inputs ?? {}, await this.news(d));
        if (checked.failures.length) throw new CheckFailedError(urn, checked.failures);
        return { urn, old, checked };
    }

    /** Check and diff every resource, changing nothing. Throws {@link CheckFailedError} like `pulumi preview`. */
    async preview(decls: ResourceDecl[]): Promise<Step[]> {
        const steps: Step[] = [];
        for (const d of decls) {
            const { urn, old, checked } = await this.checkStep(d);
            if (!old) {
                steps.push({ op: "create", urn, inputs: checked.inputs });
                continue;
            }
            const df = await this.plugin.diff(urn, old.id, old.outputs, checked.inputs);
            steps.push({ op: df.replaces.length ? "replace" : df.changes === "none" ? "same" : "update", urn, inputs: checked.inputs, replaces: df.replaces });
        }
        const declared = new Set(decls.map((d) => this.urn(d)));
        for (const s of [...this.state].reverse()) if (!declared.has(s.urn)) steps.push({ op: "delete", urn: s.urn });
        return steps;
    }

    /** Converge: like `pulumi up`. Returns the steps taken. */
    async up(decls: ResourceDecl[]): Promise<Step[]> {
        const steps: Step[] = [];
        const declared = new Set(decls.map((d) => this.urn(d)));
        // Resources no longer declared go first, newest first (dependents before their dependencies).
        for (const s of [...this.state].reverse()) {
            if (declared.has(s.urn)) continue;
            await this.plugin.delete(s.urn, s.id, { ...s.outputs, __provider: await serializedProvider(s.kind) });
            this.state = this.state.filter((x) => x !== s);
            steps.push({ op: "delete", urn: s.urn });
        }
        for (const d of decls) {
            const { urn, old, checked } = await this.checkStep(d);
            if (!old) {
                const r = await this.plugin.create(urn, checked.inputs);
                this.state.push({ urn, kind: d.kind, type: d.type, id: r.id, inputs: checked.inputs, outputs: r.props });
                steps.push({ op: "create", urn, inputs: checked.inputs });
                continue;
            }
            const df = await this.plugin.diff(urn, old.id, old.outputs, checked.inputs);
            if (df.replaces.length) {
                await this.plugin.delete(urn, old.id, old.outputs);
                const r = await this.plugin.create(urn, checked.inputs);
                Object.assign(old, { id: r.id, inputs: checked.inputs, outputs: r.props });
                steps.push({ op: "replace", urn, inputs: checked.inputs, replaces: df.replaces });
            } else if (df.changes !== "none") {
                old.outputs = await this.plugin.update(urn, old.id, old.outputs, checked.inputs);
                old.inputs = checked.inputs;
                steps.push({ op: "update", urn, inputs: checked.inputs });
            } else {
                old.inputs = checked.inputs;
                steps.push({ op: "same", urn });
            }
        }
        return steps;
    }

    /** Like `pulumi refresh`: read every resource; gone ones leave the state, drifted ones get new outputs. */
    async refresh(): Promise<Step[]> {
        const steps: Step[] = [];
        for (const s of [...this.state]) {
            const r = await this.plugin.read(s.urn, s.id, s.outputs);
            if (!r.id) {
                this.state = this.state.filter((x) => x !== s);
                steps.push({ op: "refresh-gone", urn: s.urn });
                continue;
            }
            const before = JSON.stringify(s.outputs);
            s.outputs = r.props;
            if (r.inputs) s.inputs = r.inputs;
            if (JSON.stringify(r.props) !== before) steps.push({ op: "refresh-drift", urn: s.urn });
        }
        return steps;
    }

    /** Like `pulumi destroy`: delete in reverse creation order. */
    async destroy(): Promise<Step[]> {
        const steps: Step[] = [];
        for (const s of [...this.state].reverse()) {
            await this.plugin.delete(s.urn, s.id, s.outputs);
            this.state = this.state.filter((x) => x !== s);
            steps.push({ op: "delete", urn: s.urn });
        }
        return steps;
    }

    get(name: string): ResourceState | undefined {
        return this.state.find((s) => s.urn.endsWith("::" + name));
    }
}
