// Creates or deletes one topic, for scripts that need a topic of their own on a shared broker
// (scripts/fuzz-api). Run as a single-file source program:
//   java -cp '<kafka libs>/*' scripts/kafka/Topic.java create|delete BOOTSTRAP TOPIC [PARTITIONS]
// Exit 0: done (a topic that already exists, or is already gone, counts as done). Exit 1: the
// broker refused or did not answer within 30 s; the error is printed on stderr.
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;

public class Topic {
    public static void main(String[] args) throws Exception {
        if (args.length < 3 || !(args[0].equals("create") || args[0].equals("delete"))) {
            System.err.println("usage: Topic create|delete BOOTSTRAP TOPIC [PARTITIONS]");
            System.exit(2);
        }
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 30000);
        String topic = args[2];
        try (Admin admin = Admin.create(props)) {
            if (args[0].equals("create")) {
                int partitions = args.length > 3 ? Integer.parseInt(args[3]) : 1;
                admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1)))
                    .all().get(30, TimeUnit.SECONDS);
            } else {
                admin.deleteTopics(List.of(topic)).all().get(30, TimeUnit.SECONDS);
            }
        } catch (ExecutionException e) {
            Throwable cause = e.getCause();
            boolean done = (args[0].equals("create") && cause instanceof TopicExistsException)
                || (args[0].equals("delete") && cause instanceof UnknownTopicOrPartitionException);
            if (!done) {
                System.err.println(args[0] + " " + topic + ": " + cause);
                System.exit(1);
            }
        }
    }
}
