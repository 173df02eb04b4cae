// The heartbeat loop: runs membership.ts's state machine against the coordinator (I/O edge of
// core/client/group_membership.py). One heartbeat in flight; the next goes out when the answer
// is handled, after the consumer reconciled (or one interval, keeping the session alive), or
// after a pause (a retriable failure's backoff, or the 50 ms floor).

import { debuglog } from "node:util";
import { KolkError } from "../errors.js";
import { backoffMs } from "./core.js";
import { groupCall, sleep, type GroupHost } from "./coordinator.js";
import {
  INITIAL, heartbeatRequest, leaveRequest, onAnswer, onFailure, setOwned, takeLost,
  type MemberConfig, type MemberState, type Step,
} from "./membership.js";
import type { PartitionSet } from "./names.js";
import { heartbeatCall } from "./wire.js";

export const log = debuglog("kolk-groups"); // NODE_DEBUG=kolk-groups shows the group's decisions

export class HeartbeatLoop {
  state: MemberState = INITIAL;
  private readonly stopper = new AbortController();
  private ownedChanged = false;
  private onOwnedChanged: (() => void) | null = null;
  private task: Promise<void> | null = null;

  constructor(private readonly host: GroupHost, readonly cfg: MemberConfig, private readonly wake: () => void) {}

  start(): void {
    if (this.task === null) this.task = this.run();
  }

  /** The consumer holds `owned` now (a reconcile begun at `incarnation`); false when a fence
   * came in between (those partitions are counted lost). */
  setOwned(owned: PartitionSet, incarnation: number): boolean {
    const r = setOwned(this.state, owned, incarnation);
    this.state = r.state;
    if (r.ok) {
      this.ownedChanged = true;
      this.onOwnedChanged?.();
    }
    return r.ok;
  }

  takeLost(): { lost: PartitionSet; epoch: number } {
    const r = takeLost(this.state);
    this.state = r.state;
    return r;
  }

  private async run(): Promise<void> {
    const signal = this.stopper.signal;
    while (!signal.aborted) {
      const req = heartbeatRequest(this.state, this.cfg);
      const sentOwned = this.state.owned;
      this.ownedChanged = false;
      const t0 = Date.now();
      let step: Step;
      try {
        const answer = await groupCall(this.host, this.cfg.group, (conn, o) => heartbeatCall(conn, req.fields, o),
          { deadlineMs: req.deadlineMs, attemptMs: req.attemptMs, signal });
        if (signal.aborted) return;
        step = onAnswer(this.state, answer, Date.now() - t0, sentOwned);
      } catch (e) {
        if (signal.aborted) return;
        if (!(e instanceof KolkError)) {
          const err = new KolkError(`the heartbeat loop of group ${this.cfg.group} failed: ${String(e)}`, { cause: e });
          this.state = { ...this.state, error: { name: err.name, message: err.message, retriable: false, error: err } };
          this.wake();
          return;
        }
        step = onFailure(this.state, { name: e.name, message: e.message, retriable: e.retriable, error: e }, backoffMs);
      }
      this.state = step.state;
      if (step.log) log("group %s: %s", this.cfg.group, step.log.line);
      if (step.wake) this.wake();
      const next = step.next;
      try {
        if (next.kind === "stop") return;
        if (next.kind === "pause") await sleep(next.ms, signal);
        if (next.kind === "ownedOrInterval" && !this.ownedChanged) await this.waitOwnedChanged(next.ms, signal);
      } catch {
        return; // stopped
      }
    }
  }

  private waitOwnedChanged(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => { clearTimeout(t); signal.removeEventListener("abort", done); this.onOwnedChanged = null; resolve(); };
      const t = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
      this.onOwnedChanged = done;
    });
  }

  async stop(): Promise<void> {
    this.stopper.abort();
    const task = this.task;
    this.task = null;
    if (task !== null) await task.catch(() => undefined);
  }

  /** Stop heartbeating and leave (-1; -2 for a static member). Errors are logged: a member that
   * cannot reach its coordinator is removed after its session timeout anyway. */
  async leave(deadlineMs: number): Promise<void> {
    await this.stop();
    const fields = leaveRequest(this.state, this.cfg);
    if (fields === null) return;
    try {
      await groupCall(this.host, this.cfg.group, (conn, o) => heartbeatCall(conn, fields, o), { deadlineMs });
    } catch (e) {
      log("group %s: member %s could not leave (%s); the coordinator removes it after %d ms", this.cfg.group,
        this.state.memberId, String(e), this.cfg.sessionTimeoutMs);
    }
    this.state = { ...this.state, memberId: "", owned: new Set() };
  }
}
