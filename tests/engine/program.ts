/**
 * A whole program through the engine boundary: VfioHost's plan (sdk/hostPlan.ts) replayed through the real
 * dynamic-provider plugin with the harness's state-keeping Engine.
 *
 * Why replay the plan rather than the registrations captured under setMocks: under mocks one resource's outputs
 * are the mock's, so a VM's `devices` (an IommuBinding's address and bound functions) would carry made-up values.
 * The plan keeps them as references; here each is resolved from the real outputs of the resource it names, after
 * that resource was created — as the engine resolves an Output — and is unknown in a preview when that resource
 * is still to be created or replaced, as Pulumi sends it.
 *
 * The step logic follows `pulumi up` where the harness's Engine does not need to:
 * - a delete-before-replace first deletes the resources that `replaceWith` it (newest first) and recreates them
 *   after it (Pulumi's dependent replacement: a VM is stopped before an mdev it holds is replaced);
 * - resources the program no longer declares are deleted after everything else, newest first.
 * Pulumi's other source of dependent replacements (a provider diff with the dependent property unknown) is not
 * modelled: VfioHost relies on `replaceWith` alone.
 */
import { HostPlan, OutputRef, mapRefs, resolveOutputRef } from "../../sdk/hostPlan";
import { KIND_OF } from "../../sdk/hostPlan";
import type { ImplementationName } from "../../sdk/provider";
import { CheckFailedError, Engine, ResourceState, Step, UNKNOWN, serializedProvider } from "./harness";

export interface ProgramDecl {
    name: string;
    kind: ImplementationName;
    type: string;
    /** May hold {@link OutputRef}s to resources declared before. */
    inputs: Record<string, unknown>;
    dependsOn: string[];
    replaceWith: string[];
}

/** The declarations of a host plan, each with `connection` (the plan's, without the key file path) when given. */
export function declsOf(plan: HostPlan, connection?: Record<string, unknown>): ProgramDecl[] {
    return plan.resources.map((r) => ({
        name: r.name,
        kind: KIND_OF[r.type],
        type: `pulumi-nodejs:dynamic/vfio:${r.type}`,
        inputs: connection ? { ...r.inputs, connection } : { ...r.inputs },
        dependsOn: r.dependsOn,
        replaceWith: r.replaceWith,
    }));
}

export class ProgramEngine extends Engine {
    private byName(name: string): ResourceState | undefined {
        return this.state.find((s) => s.urn.endsWith(`::${name}`));
    }

    /** Inputs with references resolved from the state; `unknown` names resolve to the preview's unknown value. */
    private resolve(d: ProgramDecl, unknown: Set<string>): Record<string, unknown> {
        return mapRefs(d.inputs, (ref: OutputRef) => {
            const target = this.byName(ref.$ref);
            if (!target || unknown.has(ref.$ref)) return UNKNOWN;
            return resolveOutputRef(ref, target.outputs);
        }) as Record<string, unknown>;
    }

    /** What must be deleted before `name` is replaced: everything that replaceWith it, transitively, newest first. */
    private replacedWith(name: string, decls: ProgramDecl[]): ProgramDecl[] {
        const set = new Set([name]);
        let grew = true;
        while (grew) {
            grew = false;
            for (const d of decls) {
                if (!set.has(d.name) && d.replaceWith.some((n) => set.has(n))) {
                    set.add(d.name);
                    grew = true;
                }
            }
        }
        set.delete(name);
        return decls.filter((d) => set.has(d.name)).reverse();
    }

    private async checked(d: ProgramDecl, old: ResourceState | undefined, unknown: Set<string>) {
        const urn = this.urn(d);
        const c = await this.plugin.check(urn, old?.inputs ?? {}, { ...this.resolve(d, unknown), __provider: await serializedProvider(d.kind) });
        if (c.failures.length) throw new CheckFailedError(urn, c.failures);
        return c.inputs;
    }

    /** Like `pulumi preview`: check and diff every resource in order, changing nothing. */
    async previewProgram(decls: ProgramDecl[]): Promise<Step[]> {
        const steps: Step[] = [];
        const unknown = new Set<string>();
        const cascaded = new Set<string>();
        for (const d of decls) {
            const urn = this.urn(d);
            const old = this.state.find((s) => s.urn === urn);
            const inputs = await this.checked(d, old, unknown);
            if (!old) {
                unknown.add(d.name);
                steps.push({ op: "create", urn, inputs });
                continue;
            }
            if (cascaded.has(d.name)) {
                steps.push({ op: "replace", urn, inputs, replaces: ["replaceWith"] });
                continue;
            }
            const df = await this.plugin.diff(urn, old.id, old.outputs, inputs);
            if (df.replaces.length) {
                unknown.add(d.name);
                for (const dep of this.replacedWith(d.name, decls)) {
                    cascaded.add(dep.name);
                    unknown.add(dep.name);
                }
                steps.push({ op: "replace", urn, inputs, replaces: df.replaces });
            } else steps.push({ op: df.changes === "none" ? "same" : "update", urn, inputs });
        }
        const declared = new Set(decls.map((d) => this.urn(d)));
        for (const s of [...this.state].reverse()) if (!declared.has(s.urn)) steps.push({ op: "delete", urn: s.urn });
        return steps;
    }

    /** Like `pulumi up`. Returns the steps taken (a resource deleted for a dependent replacement shows as "replace"). */
    async upProgram(decls: ProgramDecl[]): Promise<Step[]> {
        const steps: Step[] = [];
        const cascaded = new Set<string>();
        const none = new Set<string>();
        const remove = async (s: ResourceState) => {
            await this.plugin.delete(s.urn, s.id, { ...s.outputs, __provider: await serializedProvider(s.kind) });
            this.state = this.state.filter((x) => x !== s);
        };
        for (const d of decls) {
            const urn = this.urn(d);
            const old = this.state.find((s) => s.urn === urn);
            const inputs = await this.checked(d, old, none);
            if (!old) {
                const r = await this.plugin.create(urn, inputs);
                this.state.push({ urn, kind: d.kind, type: d.type, id: r.id, inputs, outputs: r.props });
                steps.push(cascaded.has(d.name) ? { op: "replace", urn, inputs, replaces: ["replaceWith"] } : { op: "create", urn, inputs });
                continue;
            }
            const df = await this.plugin.diff(urn, old.id, old.outputs, inputs);
            if (df.replaces.length) {
                for (const dep of this.replacedWith(d.name, decls)) {
                    const s = this.byName(dep.name);
                    if (!s) continue;
                    await remove(s);
                    cascaded.add(dep.name);
                }
                await remove(old);
                const r = await this.plugin.create(urn, inputs);
                // Keep the declaration order in the state (destroy goes newest first).
                this.state.push({ urn, kind: d.kind, type: d.type, id: r.id, inputs, outputs: r.props });
                steps.push({ op: "replace", urn, inputs, replaces: df.replaces });
            } else if (df.changes !== "none") {
                old.outputs = await this.plugin.update(urn, old.id, old.outputs, inputs);
                old.inputs = inputs;
                steps.push({ op: "update", urn, inputs });
            } else {
                old.inputs = inputs;
                steps.push({ op: "same", urn });
            }
        }
        const declared = new Set(decls.map((d) => this.urn(d)));
        for (const s of [...this.state].reverse()) {
            if (declared.has(s.urn)) continue;
            await remove(s);
            steps.push({ op: "delete", urn: s.urn });
        }
        this.state.sort((a, b) => order(decls, this.urn.bind(this), a) - order(decls, this.urn.bind(this), b));
        return steps;
    }
}

function order(decls: ProgramDecl[], urn: (d: ProgramDecl) => string, s: ResourceState): number {
    const i = decls.findIndex((d) => urn(d) === s.urn);
    return i < 0 ? decls.length : i;
}

/** A preview as `pulumi preview` prints it: one line per step, then the plan lines the providers returned. */
export function formatSteps(steps: Step[]): string {
    const sign: Record<string, string> = { create: "+", update: "~", replace: "+-", delete: "-", same: " " };
    const out: string[] = [];
    for (const s of steps) {
        const [type, name] = s.urn.split("::").slice(-2);
        out.push(`${(sign[s.op] ?? "?").padEnd(2)} ${type.replace("pulumi-nodejs:dynamic/", "").padEnd(26)} ${name.padEnd(28)} ${s.op}${s.replaces?.length ? ` [${s.replaces.join(", ")}]` : ""}`);
        for (const line of (s.inputs?.plan as string[] | undefined) ?? []) out.push(`       ${line}`);
        if (s.inputs?.commandLine && s.op !== "same") out.push(`       ${(s.inputs.commandLine as string[]).join(" ")}`);
    }
    return out.join("\n");
}
