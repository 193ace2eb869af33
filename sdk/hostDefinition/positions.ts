/**
 * Where things are in a host.yaml: the line and column of a dotted path (from the `yaml` library's node ranges),
 * and YAML syntax errors at the position the library gives for them.
 */
import { Document, LineCounter, Node, isMap, isPair, isScalar, isSeq } from "yaml";
import { Segment, dotted } from "../../provider/schemaErrors";
import { HostProblem } from "./types";

/** Where a path is: `key` points at the key of the last segment (for unknown and duplicate keys), else the value. */
export type Locate = (segments: Segment[], at?: "key" | "value") => { line: number; column: number; source?: string } | undefined;

export const position = (p: ReturnType<Locate>): { line?: number; column?: number } => (p ? { line: p.line, column: p.column } : {});

/** A path's position in a parsed document; a path that goes deeper than the file points at the deepest node found. */
export function yamlLocator(doc: Document, lc: LineCounter, text: string): Locate {
    return (segments, at = "value") => {
        let cur: unknown = doc.contents;
        let best: Node | undefined = doc.contents ?? undefined;
        let keyNode: Node | undefined;
        for (const seg of segments) {
            keyNode = undefined;
            if (isMap(cur)) {
                const pair = cur.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(seg));
                if (!pair) break;
                keyNode = pair.key as Node;
                best = keyNode;
                cur = pair.value;
                if (cur) best = cur as Node;
                else break;
            } else if (isSeq(cur) && typeof seg === "number" && cur.items[seg]) {
                cur = cur.items[seg];
                best = cur as Node;
            } else break;
        }
        const node = at === "key" && keyNode ? keyNode : best;
        const range = node?.range;
        if (!range) return undefined;
        const { line, col } = lc.linePos(range[0]);
        return { line, column: col, source: text.slice(range[0], range[1]) };
    };
}

/**
 * The document's syntax errors, each at the position the `yaml` library gives (`pos[0]`). Only a duplicate key
 * names a path: any other error's offset is where the parser gave up, and a key that happens to start there (the
 * line after a bad indent) is not what is wrong. One problem per position: the errors that follow the first at the
 * same place are its consequences.
 */
export function syntaxProblems(doc: Document, lc: LineCounter, file: string | undefined): HostProblem[] {
    const out: HostProblem[] = [];
    const at = new Set<number>();
    for (const e of doc.errors) {
        if (at.has(e.pos[0])) continue;
        at.add(e.pos[0]);
        const { line, col } = lc.linePos(e.pos[0]);
        if (e.code === "DUPLICATE_KEY") {
            out.push({ file, line, column: col, path: duplicateKeyPath(doc, e.pos[0]) ?? "", message: "this key is already used above in the same map: every name must be unique" });
        } else {
            out.push({ file, line, column: col, path: "", message: `YAML syntax: ${e.message.split("\n")[0]}` });
        }
    }
    return out;
}

/** The dotted path of the key that starts at `offset`. */
function duplicateKeyPath(doc: Document, offset: number): string | undefined {
    const walk = (node: unknown, trail: Segment[]): string | undefined => {
        if (isMap(node)) {
            for (const p of node.items) {
                const k = isScalar(p.key) ? String(p.key.value) : "?";
                if ((p.key as Node | null)?.range?.[0] === offset) return dotted([...trail, k]);
                const r = walk(p.value, [...trail, k]);
                if (r) return r;
            }
        } else if (isSeq(node)) {
            for (let i = 0; i < node.items.length; i++) {
                const r = walk(node.items[i], [...trail, i]);
                if (r) return r;
            }
        }
        return undefined;
    };
    return walk(doc.contents, []);
}
