// The avatar page: asks this server for a token to a new room (joining it dispatches the agent),
// then shows the agent's avatar, plays the agent's voice, and keeps the transcript.
//
// Who is who follows LiveKit's own components: the agent is the `agent`-kind participant without
// `lk.publish_on_behalf`; its avatar is the one whose `lk.publish_on_behalf` names the agent. The video
// is the avatar's camera; the audio is the agent's own microphone track if it has one (the avatar did
// not come and the agent speaks itself), else the avatar's.
'use strict';

(() => {
  const LK = window.LivekitClient;
  const { Room, RoomEvent, ParticipantKind, Track } = LK;

  const ON_BEHALF = 'lk.publish_on_behalf';
  const AGENT_STATE = 'lk.agent.state';
  const TRANSCRIPTION_TOPIC = 'lk.transcription';
  const CHAT_TOPIC = 'lk.chat';
  const SEGMENT_ID = 'lk.segment_id';
  // What the worker says of its avatar (providers/status.py): starting, joined, unavailable, lost,
  // restarting; and why, for unavailable and lost.
  const AVATAR_STATUS = 'avatar.status';
  const AVATAR_REASON = 'avatar.reason';
  // The longest message the agent reads, in characters (chat.py), published on its participant.
  const MAX_MESSAGE_CHARS = 'chat.max_message_chars';

  // How long to wait before telling the user something did not come (overridable for tests:
  // ?agent_timeout=<s>&avatar_timeout=<s>). The worker itself gives the avatar 30 s to show video
  // before it speaks without it (AVATAR_JOIN_TIMEOUT).
  const params = new URLSearchParams(window.location.search);
  const seconds = (name, fallback) => {
    const value = Number(params.get(name));
    return Number.isFinite(value) && value > 0 ? value : fallback;
  };
  const AGENT_TIMEOUT_S = seconds('agent_timeout', 20);
  const AVATAR_TIMEOUT_S = seconds('avatar_timeout', 45);

  const $ = (id) => document.getElementById(id);
  const ui = {
    join: $('join'),
    leave: $('leave'),
    mic: $('mic'),
    startAudio: $('start-audio'),
    video: $('avatar-video'),
    audio: $('agent-audio'),
    placeholder: $('stage-placeholder'),
    state: $('agent-state'),
    notice: $('notice'),
    transcript: $('transcript'),
    chat: $('chat'),
    chatInput: $('chat-input'),
    chatSend: $('chat-send'),
    chatError: $('chat-error'),
  };

  // Everything about the current visit; replaced on each join.
  let visit = null;

  // For the browser test and for debugging in the console.
  window.avatarPage = {
    get room() { return visit && visit.room; },
    get videoTrack() { return visit && visit.video; },
    get audioTrack() { return visit && visit.audio; },
    timings: {},
  };

  function findAgent(room) {
    for (const p of room.remoteParticipants.values()) {
      if (p.kind === ParticipantKind.AGENT && !p.attributes[ON_BEHALF]) return p;
    }
    return undefined;
  }

  function findAvatar(room, agent) {
    if (!agent) return undefined;
    for (const p of room.remoteParticipants.values()) {
      if (p.kind === ParticipantKind.AGENT && p.attributes[ON_BEHALF] === agent.identity) return p;
    }
    return undefined;
  }

  function subscribedTrack(participant, source) {
    const publication = participant && participant.getTrackPublication(source);
    return (publication && publication.isSubscribed && publication.track) || undefined;
  }

  function setNotice(kind, severity, text) {
    if (!text) {
      ui.notice.hidden = true;
      ui.notice.textContent = '';
      delete ui.notice.dataset.kind;
      return;
    }
    ui.notice.hidden = false;
    ui.notice.textContent = text;
    ui.notice.dataset.kind = kind;
    ui.notice.dataset.severity = severity;
  }

  function show(current, next, element) {
    if (current === next) return current;
    if (current) current.detach(element);
    if (next) next.attach(element);
    return next;
  }

  function watchFirstFrame(track) {
    if (window.avatarPage.timings.firstAvatarFrame !== undefined) return;
    const mark = () => {
      if (visit && visit.video === track && window.avatarPage.timings.firstAvatarFrame === undefined) {
        window.avatarPage.timings.firstAvatarFrame = performance.now();
      }
    };
    if (ui.video.requestVideoFrameCallback) ui.video.requestVideoFrameCallback(mark);
    else ui.video.addEventListener('loadeddata', mark, { once: true });
  }

  // The whole page follows from the room's state: every room event just calls render().
  function render() {
    if (!visit) return;
    const { room } = visit;
    const agent = findAgent(room);
    const avatar = findAvatar(room, agent);
    if (agent && !visit.agentSeenAt) {
      const current = visit;
      current.agentSeenAt = performance.now();
      clearTimeout(current.agentTimer);
      current.avatarTimer = setTimeout(() => { current.avatarOverdue = true; render(); }, AVATAR_TIMEOUT_S * 1000);
    }
    if (avatar) visit.avatarSeen = true;

    const video = subscribedTrack(avatar, Track.Source.Camera);
    const agentVoice = subscribedTrack(agent, Track.Source.Microphone);
    const audio = agentVoice || subscribedTrack(avatar, Track.Source.Microphone);
    const videoBefore = visit.video;
    visit.video = show(visit.video, video, ui.video);
    visit.audio = show(visit.audio, audio, ui.audio);
    if (video && video !== videoBefore) watchFirstFrame(video);
    document.body.dataset.video = video ? 'on' : 'off';

    const state = agent && agent.attributes[AGENT_STATE];
    ui.state.hidden = !state;
    ui.state.textContent = state ? `Agent: ${state}` : '';
    ui.startAudio.hidden = room.canPlaybackAudio;

    renderNotice(agent, avatar, video, agentVoice);
  }

  function renderNotice(agent, avatar, video, agentVoice) {
    if (visit.ended) return;
    if (!agent) {
      if (visit.agentSeenAt) {
        setNotice('agent-left', 'warning', 'The agent left the conversation. Press “Leave”, then “Start” to begin a new one.');
      } else if (visit.agentOverdue) {
        setNotice('no-agent', 'error',
          `No agent came: nothing joined this room within ${AGENT_TIMEOUT_S} s. Is the worker running ` +
          `(scripts/run-local.sh starts one, agent name “${visit.agentName}”)? A worker that is at full capacity ` +
          'turns the job down and it is not offered again: press “Leave”, then “Start” to try again.');
      } else {
        setNotice('waiting-agent', 'info', 'Waiting for the agent to join…');
      }
      ui.placeholder.textContent = 'Waiting for the agent…';
      return;
    }
    const status = agent.attributes[AVATAR_STATUS];
    const reason = agent.attributes[AVATAR_REASON];
    const because = reason ? ` (${reason})` : '';
    if (status === 'lost' || status === 'restarting') {
      setNotice('avatar-recovering', 'warning',
        `The avatar dropped out${because}. The agent talks in its own voice while a new avatar starts…`);
      ui.placeholder.textContent = 'The avatar is coming back…';
      return;
    }
    if (!avatar) {
      if (agentVoice && status === 'starting') {
        // The agent speaks in its own voice while its avatar boots (AVATAR_SPEAK_BEFORE_VIDEO).
        setNotice('avatar-arriving', 'info', 'The agent is talking; its avatar is on its way…');
        ui.placeholder.textContent = 'The avatar is on its way…';
      } else if (agentVoice || status === 'unavailable') {
        setNotice('avatar-fallback', 'warning',
          `The avatar could not start${because}, so the agent is talking to you in its own voice, without video.`);
        ui.placeholder.textContent = 'No avatar: voice only.';
      } else if (visit.avatarSeen) {
        setNotice('avatar-left', 'warning', 'The avatar left the call.');
        ui.placeholder.textContent = 'The avatar left.';
      } else if (visit.avatarOverdue) {
        setNotice('no-avatar', 'error',
          `The agent is here but its avatar did not come within ${AVATAR_TIMEOUT_S} s. ` +
          'The worker log says why (provider refused, timed out, …).');
        ui.placeholder.textContent = 'No avatar.';
      } else {
        setNotice('waiting-avatar', 'info', 'The agent is here; waiting for its avatar…');
        ui.placeholder.textContent = 'Waiting for the avatar…';
      }
      return;
    }
    if (!video) {
      setNotice('waiting-video', 'info', 'The avatar joined; waiting for its video…');
      ui.placeholder.textContent = 'Waiting for the avatar’s video…';
      return;
    }
    clearTimeout(visit.avatarTimer);
    setNotice();
  }

  // One transcript line per segment; a stream carries a segment's text (the agent's in deltas,
  // the user's as the whole text so far), so each stream's text replaces the line's.
  function transcriptLine(segmentId, speaker) {
    let line = segmentId ? ui.transcript.querySelector(`li[data-segment="${CSS.escape(segmentId)}"]`) : null;
    if (!line) {
      line = document.createElement('li');
      if (segmentId) line.dataset.segment = segmentId;
      line.dataset.speaker = speaker;
      ui.transcript.append(line);
    }
    return line;
  }

  async function onTranscription(reader, participantInfo) {
    if (!visit) return;
    const speaker = participantInfo.identity === visit.room.localParticipant.identity ? 'you' : 'agent';
    const line = transcriptLine(reader.info.attributes && reader.info.attributes[SEGMENT_ID], speaker);
    let text = '';
    try {
      for await (const chunk of reader) {
        text += chunk;
        line.textContent = text;
        ui.transcript.scrollTop = ui.transcript.scrollHeight;
      }
    } catch (error) {
      // The room closed mid-sentence (the user left): keep what was said so far.
      console.info('transcription stream ended early:', error.message);
    }
  }

  // Under the text box, until the next message goes out (room events re-render the notice above).
  function setChatError(kind, text) {
    ui.chatError.hidden = !text;
    ui.chatError.textContent = text || '';
    if (kind) ui.chatError.dataset.kind = kind;
    else delete ui.chatError.dataset.kind;
  }

  // A typed message shows in the transcript at once, as chat apps do; the agent's answer comes after
  // it (the agent answers typed messages in order, once it has finished what it is saying).
  async function sendChat(event) {
    event.preventDefault();
    const text = ui.chatInput.value.trim();
    if (!text || !visit) return;
    const agent = findAgent(visit.room);
    const limit = Number(agent && agent.attributes[MAX_MESSAGE_CHARS]);
    const length = [...text].length; // characters, as the agent counts them
    if (Number.isFinite(limit) && limit > 0 && length > limit) {
      setChatError('too-long',
        `Your message is ${length} characters long; the agent reads messages of up to ${limit} characters. ` +
        'Shorten it and send it again.');
      return; // kept in the box, to shorten
    }
    setChatError();
    ui.chatInput.value = '';
    const line = transcriptLine(null, 'you');
    line.textContent = text;
    line.dataset.state = 'sending';
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
    try {
      await visit.room.localParticipant.sendText(text, { topic: CHAT_TOPIC });
      line.dataset.state = 'sent';
    } catch (error) {
      line.dataset.state = 'failed';
      setChatError('not-sent', `Your message was not sent: ${error.message}`);
    }
  }

  async function setMicrophone(enabled) {
    if (!visit) return;
    try {
      await visit.room.localParticipant.setMicrophoneEnabled(enabled);
      ui.mic.setAttribute('aria-pressed', String(enabled));
      ui.mic.textContent = enabled ? 'Mute microphone' : 'Unmute microphone';
    } catch (error) {
      ui.mic.setAttribute('aria-pressed', 'false');
      ui.mic.textContent = 'Unmute microphone';
      setNotice('no-microphone', 'warning',
        `The microphone is not available (${error.message}). You can still type to the agent.`);
    }
  }

  function setPhase(phase) {
    document.body.dataset.phase = phase;
    const inRoom = phase === 'connected';
    ui.join.hidden = inRoom || phase === 'connecting';
    ui.join.disabled = phase === 'connecting';
    ui.leave.hidden = !inRoom;
    ui.mic.hidden = !inRoom;
    ui.chatInput.disabled = !inRoom;
    ui.chatSend.disabled = !inRoom;
    if (!inRoom) {
      ui.startAudio.hidden = true;
      ui.state.hidden = true;
    }
  }

  function endVisit(kind, severity, text) {
    if (!visit) return;
    const ended = visit;
    ended.ended = true;
    clearTimeout(ended.agentTimer);
    clearTimeout(ended.avatarTimer);
    ended.video = show(ended.video, undefined, ui.video);
    ended.audio = show(ended.audio, undefined, ui.audio);
    document.body.dataset.video = 'off';
    ui.placeholder.textContent = 'Press “Start” to talk to the avatar.';
    setPhase('idle');
    setNotice(kind, severity, text);
  }

  async function join() {
    setPhase('connecting');
    setNotice('connecting', 'info', 'Connecting…');
    window.avatarPage.timings = { joinClicked: performance.now() };
    let details;
    try {
      const response = await fetch('/api/token', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: '{}',
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
      details = body;
    } catch (error) {
      setPhase('idle');
      setNotice('no-token', 'error', `This page’s server did not give a token: ${error.message}`);
      return;
    }

    const room = new Room();
    visit = { room, agentName: details.agent_name, video: undefined, audio: undefined };
    const current = visit;
    for (const event of [
      RoomEvent.ParticipantConnected, RoomEvent.ParticipantDisconnected,
      RoomEvent.TrackSubscribed, RoomEvent.TrackUnsubscribed, RoomEvent.TrackPublished,
      RoomEvent.TrackUnpublished, RoomEvent.ParticipantAttributesChanged,
      RoomEvent.AudioPlaybackStatusChanged,
    ]) {
      room.on(event, () => { if (visit === current) render(); });
    }
    room.on(RoomEvent.Disconnected, (reason) => {
      if (visit !== current || current.ended) return;
      const why = LK.DisconnectReason[reason] || 'unknown reason';
      endVisit('disconnected', 'error', `Disconnected from the LiveKit server (${why}).`);
    });
    room.registerTextStreamHandler(TRANSCRIPTION_TOPIC, (reader, info) => {
      if (visit === current) onTranscription(reader, info);
    });

    try {
      await room.connect(details.server_url, details.participant_token);
    } catch (error) {
      if (visit === current) {
        endVisit('no-server', 'error',
          `Could not join the room at ${details.server_url}: ${error.message}. Is livekit-server running?`);
      }
      return;
    }
    window.avatarPage.timings.connected = performance.now();
    ui.transcript.replaceChildren();
    setPhase('connected');
    current.agentTimer = setTimeout(() => { current.agentOverdue = true; render(); }, AGENT_TIMEOUT_S * 1000);
    render();
    await setMicrophone(true);
  }

  async function leave() {
    if (!visit) return;
    const room = visit.room;
    endVisit('left', 'info', 'You left the conversation.');
    await room.disconnect();
  }

  ui.join.addEventListener('click', join);
  ui.leave.addEventListener('click', leave);
  ui.mic.addEventListener('click', () => setMicrophone(ui.mic.getAttribute('aria-pressed') !== 'true'));
  ui.startAudio.addEventListener('click', async () => {
    if (visit) await visit.room.startAudio();
    render();
  });
  ui.chat.addEventListener('submit', sendChat);
})();
