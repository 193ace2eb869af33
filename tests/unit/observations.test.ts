/**
 * The host pool's observations (what check read, kept for the create that follows in the same program): per machine,
 * shared by a host and its locked sections, bounded.
 */
import { FakeHost } from "../fake/host";
import { fakeLabKernel } from "../fake/lab";
import { OBSERVATIONS_PER_HOST, observations } from "../../provider/host";

test("a locked section sees what was kept outside it on the same host; another host sees nothing", async () => {
    const k = fakeLabKernel();
    const a = new FakeHost(k);
    const b = new FakeHost(k);
    observations<number>(a, "t").set("0000:01:00.0", 7);
    const inside = await a.withLock(async (locked) => observations<number>(locked, "t").get("0000:01:00.0"));
    expect(inside).toBe(7);
    expect(observations<number>(b, "t").get("0000:01:00.0")).toBeUndefined();
    expect(observations<number>(a, "other kind").get("0000:01:00.0")).toBeUndefined();
});

test("a host keeps at most OBSERVATIONS_PER_HOST observations; the least recently stored go first", () => {
    const h = new FakeHost(fakeLabKernel());
    const o = observations<number>(h, "t");
    for (let i = 0; i <= OBSERVATIONS_PER_HOST; i++) o.set(`k${i}`, i);
    expect(o.get("k0")).toBeUndefined();
    expect(o.get("k1")).toBe(1);
    o.set("k1", 1);
    o.set("new", 0);
    expect(o.get("k1")).toBe(1);
    expect(o.get("k2")).toBeUndefined();
});
