/**
 * The host half of a resource's `check`: read the host and plan (nothing changes), collecting the plan's problems;
 * a host that cannot be reached (or whose interpreter went away) is a failure on `connection`, where the user fixes it.
 */
import type { CheckFailure } from "./check";
import { withHost } from "./host";
import type { Connection } from "./host/ssh";
import type { Host } from "./host/types";

export async function checkOnHost(connection: Connection | undefined, onHost: Host | undefined, body: (host: Host) => Promise<CheckFailure[]>): Promise<CheckFailure[]> {
    try {
        return await withHost(connection, body, onHost);
    } catch (e) {
        return [{ property: "connection", reason: (e as Error).message }];
    }
}
